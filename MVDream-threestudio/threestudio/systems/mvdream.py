"""``mvdream-system``: a NeRF optimised with multiview (x0-)SDS from MVDream.

Each training step renders the batch's ``n_view`` cameras per object, feeds ``comp_rgb`` to the
guidance (which returns ``loss_sds``), and adds the regularisers, every weight a scheduled value
``C(lambda_*)``:

  orient      sum(weights * max(n . t_dir, 0)^2) / #(opacity > 0)    (needs the renderer's normals)
  sparsity    mean(sqrt(opacity^2 + 0.01))
  opaque      BCE(clamp(opacity), clamp(opacity))
  z_variance  mean of z_variance over pixels with opacity > 0.5      (0 when there are none)

The system builds the guidance with the trainer's precision (the guidance applies the precision
rule, ``compute_in_fp16``) and hands the guidance's text encoder and its cache key to the prompt
processor. Port option ``use_recompute``: recompute the guidance's heavy cells in the backward pass
to save memory; a guidance may name them with ``heavy_cells()`` (default: its ``model``).
"""
from dataclasses import dataclass
from typing import Any, Dict, List

from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype

import threestudio

from ..utils.config import ConfigError, log_ignored_keys, parse_structured
from .base import BaseLift3DSystem


@dataclass
class MVDreamLossConfig:
    lambda_sds: Any = 1.0
    lambda_orient: Any = 0.0
    lambda_sparsity: Any = 0.0
    lambda_opaque: Any = 0.0
    lambda_z_variance: Any = 0.0


def _binary_cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    return -(target * ops.log(pred) + (1.0 - target) * ops.log(1.0 - pred)).mean()


@threestudio.register("mvdream-system")
class MVDreamSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        visualize_samples: bool = False
        use_recompute: bool = False  # port option, see module doc

    cfg: Config
    RNG_COMPONENTS = ("guidance", "prompt_processor")

    def configure(self):
        self.loss_cfg = parse_structured(MVDreamLossConfig, self.cfg.loss, prefix="system.loss")
        log_ignored_keys(self.cfg, ("visualize_samples",), "system")
        super().configure()
        self.train_log: Dict[str, float] = {}
        if self.eval_only:
            self.guidance = self.prompt_processor = None
            return
        # the guidance keeps its frozen model out of the cell tree: never optimised nor checkpointed
        self.guidance = threestudio.find(self.cfg.guidance_type)(self.cfg.guidance, precision=self.precision)
        self.prompt_processor = threestudio.find(self.cfg.prompt_processor_type)(
            self.cfg.prompt_processor, text_encoder=self.guidance.encode_text,
            cache_key=self.guidance.text_encoder_key)
        self.prompt_utils = self.prompt_processor()
        if self.cfg.use_recompute:
            for cell in self._heavy_guidance_cells():
                cell.recompute()

    def _heavy_guidance_cells(self) -> List[nn.Cell]:
        if hasattr(self.guidance, "heavy_cells"):
            return list(self.guidance.heavy_cells())
        model = getattr(self.guidance, "model", None)
        return [model] if isinstance(model, nn.Cell) else []

    # ------------------------------------------------------------------ training
    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return self.renderer(**batch)

    def _require(self, out: Dict[str, Any], keys, loss_name: str):
        for key in keys:
            if key not in out:
                hint = ""
                if key == "normal" and getattr(self.geometry.cfg, "normal_type", None) is None:
                    hint = " (set system.geometry.normal_type, e.g. analytic)"
                elif key == "normal":
                    hint = (" (the renderer computes normals for materials that need them: use e.g. "
                            "diffuse-with-point-light-material, or set system.material.requires_normal=true)")
                raise ConfigError(f"system.loss.{loss_name} > 0 needs the renderer output '{key}', which "
                                  f"{self.cfg.renderer_type} does not give with this config{hint}")

    def training_loss(self, batch: Dict[str, Any]) -> Tensor:
        """The scalar loss; fills ``self.train_log`` (plain floats) as a side effect."""
        out = self.forward(batch)
        guidance_out = self.guidance(out["comp_rgb"], self.prompt_utils, **batch)
        terms: Dict[str, Tensor] = {}
        loss = 0.0
        log: Dict[str, Any] = {}
        for name, value in guidance_out.items():
            log[f"train/{name}"] = value
            if name.startswith("loss_"):
                lam_name = name.replace("loss_", "lambda_")
                if not hasattr(self.loss_cfg, lam_name):
                    raise ConfigError(f"the guidance returns {name} but system.loss has no {lam_name}")
                loss = loss + value * self.C(getattr(self.loss_cfg, lam_name))

        cfg = self.loss_cfg
        if self.C(cfg.lambda_orient) > 0:
            self._require(out, ("normal", "weights", "t_dirs", "opacity"), "lambda_orient")
            cos = (out["normal"] * out["t_dirs"]).sum(-1, keepdims=True)
            n_visible = ops.maximum((out["opacity"] > 0).astype(mstype.float32).sum(), 1.0)
            terms["orient"] = (ops.stop_gradient(out["weights"]) * ops.relu(cos) ** 2).sum() / n_visible
        if self.C(cfg.lambda_sparsity) > 0:
            terms["sparsity"] = ops.sqrt(out["opacity"] ** 2 + 0.01).mean()
        if self.C(cfg.lambda_opaque) > 0:
            clamped = ops.clamp(out["opacity"], 1.0e-3, 1.0 - 1.0e-3)
            terms["opaque"] = _binary_cross_entropy(clamped, clamped)
        if self.C(cfg.lambda_z_variance) > 0:
            # z variance loss of HiFA (arXiv:2305.18766): fewer floaters, more solid geometry
            self._require(out, ("z_variance",), "lambda_z_variance")
            mask = (out["opacity"] > 0.5).astype(mstype.float32)
            terms["z_variance"] = (out["z_variance"] * mask).sum() / ops.maximum(mask.sum(), 1.0)
        for name, value in terms.items():
            log[f"train/loss_{name}"] = value
            loss = loss + value * self.C(getattr(cfg, f"lambda_{name}"))

        for name, value in vars(cfg).items():
            log[f"train_params/{name}"] = self.C(value)
        log["train/loss"] = loss
        self.train_log = {k: float(v.asnumpy()) if isinstance(v, Tensor) else float(v) for k, v in log.items()}
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_images(self, out: Dict[str, Any]) -> list:
        items = []
        if "comp_rgb" in out:
            items.append({"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}})
        if "comp_normal" in out:
            items.append({"type": "rgb", "img": out["comp_normal"][0],
                          "kwargs": {"data_format": "HWC", "data_range": (0, 1)}})
        items.append({"type": "grayscale", "img": out["opacity"][0, :, :, 0],
                      "kwargs": {"cmap": None, "data_range": (0, 1)}})
        return items

    def _index(self, batch, batch_idx: int) -> int:
        index = batch.get("index", batch_idx)
        return int(index.asnumpy().reshape(-1)[0]) if isinstance(index, Tensor) else int(index)

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> str:
        out = self.forward(batch)
        return self.save_image_grid(f"it{self.true_global_step}-val/{self._index(batch, batch_idx)}.png",
                                    self._eval_images(out))

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> str:
        out = self.forward(batch)
        return self.save_image_grid(f"it{self.true_global_step}-test/{self._index(batch, batch_idx)}.png",
                                    self._eval_images(out))

    def on_test_epoch_end(self, formats=("mp4",)) -> List[str]:
        name = f"it{self.true_global_step}-test"
        return self.save_img_sequence(name, name, r"(\d+)\.png", save_format=list(formats), fps=30)

"""Multi-view x0-SDS guidance with the MVDream diffusion model
(port of MVDream-threestudio's ``multiview_diffusion_guidance.py``).

The frozen diffusion model is held in a plain Python object, not as a child cell, so
its ~1.3B parameters never appear in the system's ``parameters_and_names()`` /
``trainable_params()`` (hence neither in its optimizer nor in its checkpoints); all of
them are also marked ``requires_grad=False``. Gradients still flow through the VAE
encoder to the rendered image.

Every random draw (timestep, VAE posterior sample, diffusion noise) comes from the
guidance's own NumPy Generator (``seed``), whose state is saved/restored with
``get_rng_state``/``set_rng_state``; each draw can also be injected (tests).

Use from the system:

    guidance = threestudio.find("multiview-diffusion-guidance")(cfg.guidance, precision=trainer_precision)
    processor = threestudio.find(cfg.prompt_processor_type)(
        cfg.prompt_processor, text_encoder=guidance.encode_text, cache_key=guidance.text_encoder_key)
    prompt_utils = processor()
    out = guidance(rgb, prompt_utils, **batch)  # rgb [B, H, W, 3] in [0, 1]; batch has c2w, elevation, ...
    loss = out["loss_sds"] * lambda_sds        # differentiate w.r.t. the system's own parameters
    guidance.do_update_step(epoch, global_step)  # or via the system's do_update_step recursion
    ckpt["guidance_rng"] = guidance.get_rng_state()

Holding the guidance as a child cell of the system is fine: the system's
``trainable_params()``/``parameters_and_names()`` contain nothing of it.
"""
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

import threestudio
from mvdream import model_zoo
from mvdream.camera_utils import normalize_camera
from mvdream.errors import ModelConfigError
from threestudio.utils.autodiff import ChunkedVJP, Untaped, no_grad
from threestudio.utils.base import BaseModule
from threestudio.utils.config import ConfigError
from threestudio.utils.distributed import draw_rows
from threestudio.utils.misc import C
from threestudio.utils.resize import resize_bilinear

CKPT_OPTION = "system.guidance.ckpt_path"
logger = logging.getLogger("threestudio")


class _FrozenModel:
    """Plain holder: keeps the diffusion model out of the guidance's cell tree."""

    def __init__(self, model):
        self.model = model


def compute_in_fp16(half_precision_weights: bool, trainer_precision: Any) -> bool:
    """The precision rule of the guidance, in one place: its diffusion model (UNet, VAE, text
    encoder) computes in fp16 when ``system.guidance.half_precision_weights`` is true (as in the
    original, whose default it is) or ``trainer.precision`` is 16 / 16-mixed (the original's
    autocast); else in fp32. Parameters, norms, the loss and everything outside the guidance
    (geometry, renderer, optimizer) stay fp32 either way."""
    return bool(half_precision_weights) or str(trainer_precision) in ("16", "16-mixed")


def _group_std(x: Tensor, n_view: int) -> Tensor:
    """Unbiased (N-1) std over each group of ``n_view`` consecutive images, shape [G, 1]."""
    flat = x.reshape(x.shape[0] // n_view, -1)
    centered = flat - flat.mean(axis=1, keep_dims=True)
    return ops.sqrt((centered * centered).sum(axis=1, keepdims=True) / (flat.shape[1] - 1))


@threestudio.register("multiview-diffusion-guidance")
class MultiviewDiffusionGuidance(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        model_name: Optional[str] = "sd-v2.1-base-4view"  # a key of mvdream.model_zoo.PRETRAINED_MODELS
        ckpt_path: Optional[str] = None  # local checkpoint; None: Hugging Face cache / download
        guidance_scale: float = 50.0
        grad_clip: Optional[Any] = None  # plain-SDS branch only; may be scheduled
        # Precision (the one rule, see ``compute_in_fp16``): the diffusion model computes in fp16
        # when this is true (the original's key and default) or trainer.precision is 16-mixed.
        half_precision_weights: bool = True

        min_step_percent: Any = 0.02  # may be scheduled [start_step, start, end, end_step]
        max_step_percent: Any = 0.98

        camera_condition_type: str = "rotation"
        view_dependent_prompting: bool = False

        n_view: int = 4
        image_size: int = 256
        recon_loss: bool = True
        recon_std_rescale: float = 0.5

        # Port additions.
        config_path: Optional[str] = None  # model YAML (a path, or a config shipped with mvdream, e.g. tiny.yaml)
        pretrained: bool = True  # False: random weights, nothing downloaded (smoke runs)
        seed: Optional[int] = None  # seed of the guidance's own random draws (None: from NumPy's global RNG)
        # >0: differentiate the VAE encoder this many images at a time (the forward keeps no
        # activations, the backward re-encodes chunk by chunk): less memory for one extra VAE
        # forward. 0 (and null, as older configs say): in one piece, as the original. Since the
        # fused CPU kernels, one piece of 8 images at 256x256 costs ~3 GB more than pieces of 1
        # (a full-size 64x64 x 8 step peaks at 14.2 vs 11.3 GB) and saves the extra forward.
        vae_grad_chunk_size: Optional[int] = 0
        # The UNet as a static graph (mvdream's ``graph_mode``; its output is a constant either
        # way). A full-size 64x64 x 8 fp32 step on 2 CPU cores: 83 s instead of 102 s, but a
        # 22.5 GB peak instead of 17.2 GB, hence off unless asked for.
        unet_graph_mode: bool = False

    cfg: Config

    def configure(self, precision: Any = 32) -> None:
        """``precision``: the trainer's precision (``trainer.precision``: 32 or 16-mixed)."""
        if self.cfg.camera_condition_type != "rotation":
            raise ConfigError(f"camera_condition_type '{self.cfg.camera_condition_type}' is not supported "
                              "(only 'rotation')")
        model = self._build_model()
        model.model.diffusion_model.graph_mode = self.cfg.unet_graph_mode
        # The prompt processor encodes each prompt once: a packed copy of the text encoder's GEMM
        # weights (mvdream's FrozenOpenCLIPEmbedder.pack_weights) would hold ~1.2 GB all run long.
        if hasattr(model.cond_stage_model, "pack_weights"):
            model.cond_stage_model.pack_weights = False
        for param in model.get_parameters():
            param.requires_grad = False
        model.set_train(False)
        self._frozen = _FrozenModel(model)
        fp16 = compute_in_fp16(self.cfg.half_precision_weights, precision)
        if fp16 and ms.get_context("device_target") == "CPU":
            logger.warning("the guidance computes in fp16 (system.guidance.half_precision_weights=%s, "
                           "trainer.precision=%s), about 3x slower than fp32 on CPU; set both "
                           "system.guidance.half_precision_weights=false and trainer.precision=32 for fp32",
                           self.cfg.half_precision_weights, precision)
        self.set_half_precision(fp16)

        self.num_train_timesteps = int(model.num_timesteps)
        self.grad_clip_val: Optional[float] = None
        # seed None: drawn from NumPy's global generator, so that the experiment's `seed`
        # (seed_everything) makes a run reproducible, as torch's global seed does in the original
        seed = self.cfg.seed if self.cfg.seed is not None else int(np.random.randint(2 ** 31))
        self._rng = np.random.default_rng(seed)
        self.update_step(0, 0)

    def _config_path(self) -> Optional[str]:
        path = self.cfg.config_path
        if path and not os.path.isfile(path):
            path = str(model_zoo.get_config_file(path))  # a shipped config name, else FileNotFoundError
        return path

    def _build_model(self):
        cfg = self.cfg
        model_name = None if cfg.config_path and cfg.model_name not in model_zoo.PRETRAINED_MODELS \
            else cfg.model_name
        ckpt_path = cfg.ckpt_path
        info = model_zoo.PRETRAINED_MODELS.get(cfg.model_name)
        if cfg.pretrained and not ckpt_path and info is not None:
            try:
                ckpt_path = model_zoo.download_checkpoint(info["repo_id"], info["filename"], option=CKPT_OPTION)
            except model_zoo.ModelNotAvailableError as err:
                # Re-word the hint as a config override the user can paste.
                reason = str(err).split("; download it from")[0]
                raise model_zoo.ModelNotAvailableError(
                    f"{reason}; download it from https://huggingface.co/{info['repo_id']} and set "
                    f"{CKPT_OPTION}=/path/to/{info['filename']}") from None
        try:
            return model_zoo.build_model(model_name, ckpt_path=ckpt_path, config_path=self._config_path(),
                                         pretrained=cfg.pretrained)
        except ModelConfigError as err:  # e.g. the text tower's open_clip json: one line for launch.py
            raise ConfigError(str(err)) from None

    # ------------------------------------------------------------------ access
    def set_half_precision(self, enabled: bool) -> None:
        """fp16 compute in UNet, VAE and text encoder (parameters, norms, I/O stay fp32)."""
        self.model.set_dtype(ms.float16 if enabled else ms.float32)

    def heavy_cells(self):
        """Cells worth recomputing in the backward pass: only the VAE encoder is differentiated
        (the UNet runs without an autodiff tape)."""
        return [self.model.first_stage_model.encoder]

    @property
    def model(self):
        """The frozen LatentDiffusionInterface (not a child cell, see module docstring)."""
        return self._frozen.model

    def encode_text(self, prompts) -> Tensor:
        """Text embeddings [N, 77, C] of a list of prompts (the prompt processor's encoder)."""
        with no_grad():
            return ops.stop_gradient(self.model.get_learned_conditioning(list(prompts)))

    @property
    def text_encoder_key(self) -> Optional[str]:
        """Identifies the text encoder's weights for the prompt processor's disk cache;
        None (do not cache) for randomly initialised weights."""
        cfg = self.cfg
        if not cfg.pretrained:
            return None
        parts = [str(cfg.model_name)]
        if cfg.config_path:
            with open(self._config_path(), "rb") as f:
                parts.append(hashlib.sha256(f.read()).hexdigest()[:16])
        if cfg.ckpt_path:
            parts += [os.path.basename(cfg.ckpt_path), str(os.path.getsize(cfg.ckpt_path))]
        return "|".join(parts)

    def get_rng_state(self):
        return self._rng.bit_generator.state

    def set_rng_state(self, state) -> None:
        self._rng.bit_generator.state = state

    def _normal(self, shape, shard=None) -> Tensor:
        # shard: a data-parallel rank's rows of the noise one process draws for the whole batch
        return Tensor(draw_rows(self._rng.standard_normal, shape, shard).astype(np.float32))

    # ------------------------------------------------------------------ pieces
    def get_camera_cond(self, c2w, fovy=None) -> Tensor:
        # threestudio's cameras are already in Blender coordinates (no conversion).
        if not isinstance(c2w, Tensor):
            c2w = Tensor(np.asarray(c2w, np.float32))
        return normalize_camera(c2w.astype(ms.float32))

    def _encode(self, imgs: Tensor, posterior_noise: Tensor) -> Tensor:
        posterior = self.model.encode_first_stage(imgs * 2.0 - 1.0)
        return self.model.get_first_stage_encoding(posterior, noise=posterior_noise)

    def encode_images(self, imgs: Tensor, posterior_noise: Optional[Tensor] = None, shard=None) -> Tensor:
        """Latents of [B, 3, H, W] images in [0, 1], differentiable w.r.t. ``imgs``."""
        if posterior_noise is None:
            factor = self.model.vae_downsampling_factor
            channels = self.model.first_stage_model.embed_dim
            posterior_noise = self._normal((imgs.shape[0], channels, imgs.shape[2] // factor,
                                            imgs.shape[3] // factor), shard)
        chunk = self.cfg.vae_grad_chunk_size or 0
        if 0 < chunk < imgs.shape[0]:
            return ChunkedVJP(self._encode, chunk)(imgs, posterior_noise)
        return self._encode(imgs, posterior_noise)

    def _latents(self, rgb, rgb_as_latents, input_is_latent, posterior_noise, shard=None):
        if input_is_latent:
            return rgb
        rgb_bchw = ops.transpose(rgb, (0, 3, 1, 2))
        if rgb_as_latents:
            return resize_bilinear(rgb_bchw, 64, 64) * 2 - 1
        size = self.cfg.image_size
        return self.encode_images(resize_bilinear(rgb_bchw, size, size), posterior_noise, shard)

    def _timestep(self, timestep) -> Tensor:
        if timestep is None:
            timestep = int(self._rng.integers(self.min_step, self.max_step + 1))
        elif not 0 <= int(timestep) < self.num_train_timesteps:
            raise ValueError(f"timestep {timestep} outside [0, {self.num_train_timesteps})")
        return Tensor(np.array([int(timestep)], np.int64))

    def predict_noise(self, latents_noisy, t, text_embeddings, c2w=None, fovy=None):
        """(text, uncond) noise predictions for the noisy latents (one UNet call on both halves)."""
        cond = {"context": text_embeddings.astype(ms.float32)}
        if c2w is not None:
            cond.update(camera=self.get_camera_cond(c2w, fovy).tile((2, 1)), num_frames=self.cfg.n_view)
        noise_pred = self.model.apply_model(ops.concat([latents_noisy, latents_noisy], axis=0), t, cond)
        # threestudio's prompt processors stack [cond, uncond] (DDIM uses the opposite order).
        return ops.chunk(noise_pred, 2, axis=0)

    def compute_target(self, latents, t, noise, text_embeddings, c2w=None, fovy=None):
        """The regression target of ``latents`` and its intermediates (no gradient).

        x0-SDS (``recon_loss``): target = x0 predicted with CFG, its std partially rescaled
        (per group of n_view) to that of the text-only x0. Plain SDS: target = latents - g,
        g = (1 - alphas_cumprod[t]) (eps_cfg - noise). Either way d loss / d latents =
        (latents - target) / B.
        """
        cfg, model = self.cfg, self.model
        out = {"latents_noisy": model.q_sample(latents, t, noise)}
        text, uncond = self.predict_noise(out["latents_noisy"], t, text_embeddings, c2w, fovy)
        eps = uncond + cfg.guidance_scale * (text - uncond)
        out.update(noise_pred_text=text, noise_pred_uncond=uncond, noise_pred=eps)
        if cfg.recon_loss:
            recon = model.predict_start_from_noise(out["latents_noisy"], t, eps)
            out["recon_cfg"] = recon
            if cfg.recon_std_rescale > 0:
                recon_nocfg = model.predict_start_from_noise(out["latents_noisy"], t, text)
                factor = (_group_std(recon_nocfg, cfg.n_view) + 1e-8) / (_group_std(recon, cfg.n_view) + 1e-8)
                adjusted = (recon.reshape(factor.shape[0], -1) * factor).reshape(recon.shape)
                recon = cfg.recon_std_rescale * adjusted + (1 - cfg.recon_std_rescale) * recon
                out.update(recon_nocfg=recon_nocfg, std_factor=factor.reshape(-1))
            out["target"] = recon
            out["grad_norm"] = ops.norm((latents - recon) / latents.shape[0])
        else:
            # The original reads a never-set self.alphas_cumprod here (AttributeError); the
            # model's schedule is the evident intent.
            w = 1 - ops.gather(model.alphas_cumprod, t.astype(ms.int32), 0).reshape(1, 1, 1, 1)
            grad = w * (eps - noise)
            if self.grad_clip_val is not None:
                grad = ops.clamp(grad, -self.grad_clip_val, self.grad_clip_val)
            grad = ops.nan_to_num(grad, nan=0.0)
            out.update(w=w.reshape(1), grad=grad, target=latents - grad)
            out["grad_norm"] = ops.norm(grad)  # as the original: the norm of g, not of g / B
        return out

    # ------------------------------------------------------------------ forward
    def construct(self, rgb, prompt_utils, elevation, azimuth, camera_distances, c2w, rgb_as_latents=False,
                  fovy=None, timestep=None, text_embeddings=None, input_is_latent=False, noise=None,
                  posterior_noise=None, shard=None, **kwargs):
        """x0-SDS loss of ``rgb`` (B, H, W, 3) in [0, 1] (or latents (B, 4, h, w) with
        ``input_is_latent``); elevation, azimuth, camera_distances: (B,); c2w: (B, 4, 4);
        ``text_embeddings`` (2B, 77, C) replace ``prompt_utils``'s. ``noise``/``posterior_noise``
        (B, 4, h, w) / ``timestep`` replace the random draws; ``shard``: a data-parallel rank's
        part of the batch (its noise is that rank's rows of the whole batch's). Returns loss_sds
        (scalar), grad_norm (scalar), min_step, max_step, timestep (ints)."""
        cfg = self.cfg
        batch_size = rgb.shape[0]
        if batch_size % cfg.n_view != 0:
            raise ValueError(f"batch size {batch_size} is not a multiple of n_view={cfg.n_view}")
        if text_embeddings is None:
            text_embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances,
                                                               cfg.view_dependent_prompting)

        latents = self._latents(rgb, rgb_as_latents, input_is_latent, posterior_noise, shard)
        t = self._timestep(timestep)
        if noise is None:
            noise = self._normal(latents.shape, shard)

        # The diffusion model gives a target only: no gradient (and no autodiff tape) through it.
        def target_of(latents_, noise_, text_embeddings_, *c2w_):
            out_ = self.compute_target(latents_, t, noise_, text_embeddings_, c2w_[0] if c2w_ else None, fovy)
            return out_["target"], out_["grad_norm"]

        inputs = (ops.stop_gradient(latents), noise, text_embeddings) + (() if c2w is None else (c2w,))
        with no_grad():
            target, grad_norm = Untaped(target_of)(*inputs)
        out = {"target": target, "grad_norm": grad_norm}
        target = ops.stop_gradient(target)

        diff = latents - target
        loss = 0.5 * (diff * diff).sum() / batch_size
        return {"loss_sds": loss, "grad_norm": ops.stop_gradient(out["grad_norm"]), "min_step": self.min_step,
                "max_step": self.max_step, "timestep": int(t.asnumpy()[0])}

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        cfg = self.cfg
        self.min_step = int(self.num_train_timesteps * C(cfg.min_step_percent, epoch, global_step))
        self.max_step = int(self.num_train_timesteps * C(cfg.max_step_percent, epoch, global_step))
        if cfg.grad_clip is not None:
            self.grad_clip_val = C(cfg.grad_clip, epoch, global_step)

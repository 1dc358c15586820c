"""Small stand-ins for geometry / material / background / renderer / guidance / prompt processor.

They follow the interfaces the system relies on (registered as ``stub-*``) and use the same
kinds of randomness as the real modules (NumPy's global generator in the renderer and the
background, an own Generator with get/set_rng_state in the guidance), so the resume test
exercises what the real modules need. ``stub_config(path)`` rewrites a config to use the stubs
for every module type that is not registered (yet) in this checkout.
"""
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import yaml
from mindspore import Parameter, Tensor, nn, ops

import threestudio
from threestudio.utils.base import BaseModule, BaseObject
from threestudio.utils.misc import C


def _dense(n_in, n_out, seed):
    w = np.random.default_rng(seed).standard_normal((n_out, n_in)).astype(np.float32) / np.sqrt(n_in)
    return nn.Dense(n_in, n_out, weight_init=Tensor(w), bias_init="zeros")


@threestudio.register("stub-geometry")
class StubGeometry(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        n_features: int = 8
        normal_type: Optional[str] = None

    def configure(self):
        self.encoding = _dense(3, 16, 0)
        self.density_network = _dense(16, 1, 1)
        self.feature_network = _dense(16, 3, 2)

    def construct(self, points, output_normal: bool = False):
        h = ops.sin(self.encoding(points))
        density = ops.softplus(self.density_network(h) + 1.0)
        out = {"density": density, "features": self.feature_network(h)}
        if output_normal:
            out["normal"] = ops.L2Normalize(axis=-1, epsilon=1e-12)(points + 1e-3)
        return out


@threestudio.register("stub-material")
class StubMaterial(BaseModule):
    def construct(self, features, **kwargs):
        return ops.sigmoid(features)


@threestudio.register("stub-background")
class StubBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        random_aug: bool = True

    def configure(self):
        self.network = _dense(3, 3, 3)

    def construct(self, dirs):
        color = ops.sigmoid(self.network(dirs))
        if self.training and self.cfg.random_aug and np.random.rand() < 0.5:  # NumPy global RNG
            color = color * 0 + Tensor(np.random.rand(3).astype(np.float32))
        return color


@threestudio.register("stub-renderer")
class StubRenderer(BaseModule):
    """Uniform stratified samples between near and far; a small 'occupancy' buffer updated with
    NumPy randomness in update_step (like the occupancy grid)."""

    @dataclass
    class Config(BaseModule.Config):
        num_samples_per_ray: int = 8
        radius: float = 1.0

    def configure(self, geometry, material, background):
        self.geometry, self.material, self.background = geometry, material, background
        self.occs = Parameter(Tensor(np.zeros(8, np.float32)), name="occs", requires_grad=False)

    def construct(self, rays_o, rays_d, light_positions, bg_color=None, **kwargs):
        b, h, w = rays_o.shape[:3]
        n, k = b * h * w, self.cfg.num_samples_per_ray
        o, d = rays_o.reshape(n, 1, 3), rays_d.reshape(n, 1, 3)
        jitter = np.random.rand(n, k).astype(np.float32) if self.training else np.full((n, k), 0.5, np.float32)
        t = Tensor((np.arange(k, dtype=np.float32)[None] + jitter) / k * 2.0 + 0.5)  # [n, k]
        pts = o + d * t[..., None]
        geo = self.geometry(pts.reshape(-1, 3), output_normal=True)
        sigma = geo["density"].reshape(n, k)
        alpha = 1.0 - ops.exp(-sigma * (2.0 / k))
        trans = ops.cumprod(ops.concat([ops.ones((n, 1)), 1.0 - alpha[:, :-1] + 1e-10], 1), 1)
        weights = alpha * trans
        rgb = self.material(features=geo["features"]).reshape(n, k, 3)
        opacity = weights.sum(1, keepdims=True)
        depth = (weights * t).sum(1, keepdims=True)
        z_var = (weights * (t - depth) ** 2).sum(1, keepdims=True)
        bg = self.background(dirs=rays_d.reshape(n, 3)) if bg_color is None else bg_color
        comp = (weights[..., None] * rgb).sum(1) + bg * (1.0 - opacity)
        t_dirs = ops.broadcast_to(d, (n, k, 3)).reshape(-1, 3)
        return {"comp_rgb": comp.reshape(b, h, w, 3), "opacity": opacity.reshape(b, h, w, 1),
                "depth": depth.reshape(b, h, w, 1), "z_variance": z_var.reshape(b, h, w, 1),
                "weights": weights.reshape(-1, 1), "t_dirs": t_dirs, "normal": geo["normal"]}

    def update_step(self, epoch, global_step, on_load_weights=False):
        if self.training and not on_load_weights:
            self.occs.set_data(self.occs * 0.9 + Tensor(np.random.rand(8).astype(np.float32)))


class _PromptUtils:
    pass


@threestudio.register("stub-prompt-processor")
class StubPromptProcessor(BaseObject):
    @dataclass
    class Config:
        prompt: str = ""
        negative_prompt: str = ""
        pretrained_model_name_or_path: str = ""
        front_threshold: float = 30.0
        back_threshold: float = 30.0

    def __call__(self):
        return _PromptUtils()


@threestudio.register("stub-guidance")
class StubGuidance(BaseModule):
    """x0-style loss: 0.5 * ||rgb - sg(rgb - g)||^2 / B with g from a frozen layer and own noise."""

    @dataclass
    class Config(BaseModule.Config):
        model_name: Optional[str] = "stub"
        ckpt_path: Optional[str] = None
        guidance_scale: float = 50.0
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        recon_loss: bool = True
        recon_std_rescale: float = 0.5
        n_view: int = 4
        image_size: int = 16
        camera_condition_type: str = "rotation"
        half_precision_weights: bool = True
        view_dependent_prompting: bool = False

    def configure(self):
        self.model = _dense(3, 3, 4)
        self.rng = np.random.default_rng(1234)
        self.min_step = self.max_step = 0

    def construct(self, rgb, prompt_utils, **kwargs):
        t = int(self.rng.integers(self.min_step, self.max_step + 1))
        noise = Tensor(self.rng.standard_normal(rgb.shape).astype(np.float32) * 0.1)
        target = ops.stop_gradient(ops.sigmoid(self.model(rgb + noise)) * (t / 1000.0))
        loss = 0.5 * ((rgb - target) ** 2).sum() / rgb.shape[0]
        return {"loss_sds": loss, "grad_norm": ops.norm(rgb - target), "min_step": self.min_step,
                "max_step": self.max_step}

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.min_step = int(1000 * C(self.cfg.min_step_percent, epoch, global_step))
        self.max_step = int(1000 * C(self.cfg.max_step_percent, epoch, global_step))

    def get_rng_state(self):
        return self.rng.bit_generator.state

    def set_rng_state(self, state):
        self.rng.bit_generator.state = state


STUB_FOR = {"geometry": "stub-geometry", "material": "stub-material", "background": "stub-background",
            "renderer": "stub-renderer", "guidance": "stub-guidance", "prompt_processor": "stub-prompt-processor"}


def stub_config(src, dst, force: bool = False) -> bool:
    """Write ``src`` to ``dst`` with unregistered (or, with force, all) module types replaced by
    stubs. Returns whether any stub is used."""
    with open(src) as f:
        text = f.read()
    cfg = yaml.safe_load(text)
    used = False
    for key, stub in STUB_FOR.items():
        name = cfg["system"][f"{key}_type"]
        if force or name not in threestudio.__modules__:
            keep = {k: v for k, v in cfg["system"][key].items() if k in ("prompt", "radius")}
            if key == "guidance":
                keep = {k: v for k, v in cfg["system"][key].items() if k in StubGuidance.Config.__dataclass_fields__}
            cfg["system"][f"{key}_type"], cfg["system"][key] = stub, keep
            used = True
    with open(dst, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return used

"""``diffuse-with-point-light-material``: Lambertian shading under one point light + ambient.

In training one shading mode is drawn per render (``render_options``: the whole batch, and every
piece of a render in pieces, shares it): ``albedo`` with
probability 1 - diffuse_prob (always during the first ``ambient_only_steps``), otherwise
``textureless`` with probability textureless_prob, else ``diffuse``. Evaluation uses
``diffuse`` (``albedo`` while ambient-only).
"""
import random
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from mindspore import Tensor, ops

import threestudio
from threestudio.models.geometry.implicit_volume import normalize
from threestudio.models.materials.base import BaseMaterial
from threestudio.utils.activations import get_activation


@threestudio.register("diffuse-with-point-light-material")
class DiffuseWithPointLightMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        ambient_light_color: Tuple[float, float, float] = (0.1, 0.1, 0.1)
        diffuse_light_color: Tuple[float, float, float] = (0.9, 0.9, 0.9)
        ambient_only_steps: int = 1000
        diffuse_prob: float = 0.75
        textureless_prob: float = 0.5
        albedo_activation: str = "sigmoid"
        soft_shading: bool = False

    cfg: Config
    requires_normal: bool = True

    def configure(self) -> None:
        self.ambient_light_color = Tensor(np.asarray(self.cfg.ambient_light_color, np.float32))
        self.diffuse_light_color = Tensor(np.asarray(self.cfg.diffuse_light_color, np.float32))
        self.albedo_activation = get_activation(self.cfg.albedo_activation)
        self.ambient_only = False

    def _soft_shading(self, shading: str, ambient_ratio: Optional[float]) -> bool:
        return self.training and self.cfg.soft_shading and shading != "albedo" and ambient_ratio is None

    def _light_colors(self, ambient_ratio: Optional[float], soft_diffuse: Optional[float]):
        if ambient_ratio is not None:
            return (1 - ambient_ratio) * ops.ones_like(self.diffuse_light_color), \
                ambient_ratio * ops.ones_like(self.ambient_light_color)
        if soft_diffuse is not None:
            diffuse = ops.full_like(self.diffuse_light_color, soft_diffuse)
            return diffuse, 1.0 - diffuse
        return self.diffuse_light_color, self.ambient_light_color

    def _pick_shading(self) -> str:
        if self.training:
            if self.ambient_only or random.random() > self.cfg.diffuse_prob:
                return "albedo"
            return "textureless" if random.random() < self.cfg.textureless_prob else "diffuse"
        return "albedo" if self.ambient_only else "diffuse"

    def render_options(self, shading: Optional[str] = None, ambient_ratio: Optional[float] = None,
                       soft_diffuse: Optional[float] = None, **kwargs) -> dict:
        """The shading mode and (soft shading) the diffuse light level of one render."""
        shading = shading or self._pick_shading()
        if soft_diffuse is None and self._soft_shading(shading, ambient_ratio):
            soft_diffuse = random.random()
        return {"shading": shading, "soft_diffuse": soft_diffuse}

    def construct(self, features, viewdirs=None, shading_normal=None, light_positions=None, positions=None,
                  ambient_ratio: Optional[float] = None, shading: Optional[str] = None,
                  soft_diffuse: Optional[float] = None, **kwargs):
        """features (..., Nf); shading_normal, light_positions, positions (..., 3) -> colour (..., 3).
        ``shading`` / ``soft_diffuse``: see ``render_options`` (drawn here when not given)."""
        options = self.render_options(shading, ambient_ratio, soft_diffuse)
        shading, soft_diffuse = options["shading"], options["soft_diffuse"]
        albedo = self.albedo_activation(features[..., :3])
        if shading == "albedo":
            return albedo
        diffuse_color, ambient_color = self._light_colors(ambient_ratio, soft_diffuse)
        light_dirs = normalize(light_positions - positions)
        lambert = ops.clamp((shading_normal * light_dirs).sum(axis=-1, keepdims=True), min=0.0)
        textureless = lambert * diffuse_color + ambient_color
        if shading == "textureless":
            return textureless
        if shading == "diffuse":
            return ops.clamp(albedo, 0.0, 1.0) * textureless  # albedo clamped for shading
        raise ValueError(f"Unknown shading type {shading}")

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def export(self, features, **kwargs):
        return {"albedo": ops.clamp(self.albedo_activation(features[..., :3]), 0.0, 1.0)}

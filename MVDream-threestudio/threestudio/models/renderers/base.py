"""Renderer base classes: hold (but do not own) geometry, material and background."""
from dataclasses import dataclass
from typing import Any, Dict

import numpy as np
from mindspore import Tensor

from threestudio.utils.base import BaseModule


class _SubModules:
    """Plain holder, so the sub-modules are not registered as child cells of the renderer.

    The system owns geometry/material/background; keeping them out of the renderer's cell
    tree avoids duplicated parameters in checkpoints and optimizers (as threestudio does).
    """

    def __init__(self, geometry, material, background):
        self.geometry, self.material, self.background = geometry, material, background


class Renderer(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        self.sub_modules = _SubModules(geometry, material, background)
        r = self.cfg.radius
        self.bbox = Tensor(np.array([[-r, -r, -r], [r, r, r]], np.float32))

    def construct(self, *args, **kwargs) -> Dict[str, Any]:
        raise NotImplementedError

    @property
    def geometry(self):
        return self.sub_modules.geometry

    @property
    def material(self):
        return self.sub_modules.material

    @property
    def background(self):
        return self.sub_modules.background

    def set_geometry(self, geometry) -> None:
        self.sub_modules.geometry = geometry

    def set_material(self, material) -> None:
        self.sub_modules.material = material

    def set_background(self, background) -> None:
        self.sub_modules.background = background


class VolumeRenderer(Renderer):
    pass


class Rasterizer(Renderer):
    pass

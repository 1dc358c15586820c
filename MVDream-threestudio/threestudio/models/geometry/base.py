"""Geometry base classes (threestudio ``geometry/base.py``): bbox, AABB contraction, isosurface keys."""
from dataclasses import dataclass
from typing import Union

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from threestudio.utils.base import BaseModule


def scale_tensor(x: Tensor, inp_scale, tgt_scale) -> Tensor:
    """Affinely map ``x`` from range ``inp_scale`` (a (lo, hi) pair or [2, D] tensor) to ``tgt_scale``."""
    def bounds(s):
        return (s[0], s[1]) if isinstance(s, (tuple, list)) else (s[0], s[1])

    (a0, a1), (b0, b1) = bounds(inp_scale), bounds(tgt_scale)
    return (x - a0) / (a1 - a0) * (b1 - b0) + b0


def contract_to_unisphere(x: Tensor, bbox: Tensor, unbounded: bool = False) -> Tensor:
    """Map points in ``bbox`` to [0, 1]; unbounded scenes squash |x| > 1 to a shell (mip-NeRF 360)."""
    x = scale_tensor(x, bbox, (0.0, 1.0))
    if unbounded:
        x = x * 2 - 1
        mag = ops.norm(x, dim=-1, keepdim=True)
        safe = ops.clamp(mag, min=1.0)  # where() evaluates both branches: keep them finite
        x = ops.where(mag > 1, (2 - 1 / safe) * (x / safe), x)
        x = x / 4 + 0.5
    return x


class BaseGeometry(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    @staticmethod
    def create_from(other: "BaseGeometry", cfg=None, **kwargs) -> "BaseGeometry":
        raise TypeError(f"Cannot create {BaseGeometry.__name__} from {other.__class__.__name__}")

    def export(self, *args, **kwargs):
        return {}


class BaseImplicitGeometry(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        isosurface: bool = True
        isosurface_method: str = "mt"
        isosurface_resolution: int = 128
        isosurface_threshold: Union[float, str] = 0.0
        isosurface_chunk: int = 0
        isosurface_coarse_to_fine: bool = True
        isosurface_deformable_grid: bool = False
        isosurface_remove_outliers: bool = True
        isosurface_outlier_n_faces_threshold: Union[int, float] = 0.01

    cfg: Config

    def configure(self) -> None:
        r = self.cfg.radius
        # Derived from the config, not trained and not saved: a plain Tensor, not a Parameter.
        self.bbox = Tensor(np.array([[-r, -r, -r], [r, r, r]], np.float32))
        self.unbounded = False

    def construct(self, points: Tensor, output_normal: bool = False):
        # points (..., 3) -> {"density": (..., 1), "features": (..., Nf), "normal": (..., 3) if output_normal}
        raise NotImplementedError

    def forward_field(self, points: Tensor):
        """(field [*N, 1], deformation [*N, 3] or None) sampled for isosurface extraction."""
        raise NotImplementedError

    def forward_level(self, field: Tensor, threshold: float) -> Tensor:
        """Level set value: negative inside, as the isosurface helpers expect."""
        raise NotImplementedError

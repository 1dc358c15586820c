"""Material base class: maps per-sample features (+ geometry/lighting) to colour."""
from dataclasses import dataclass

from threestudio.utils.base import BaseModule


class BaseMaterial(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config
    requires_normal: bool = False
    requires_tangent: bool = False

    def construct(self, *args, **kwargs):
        # features (..., Nf), viewdirs, positions, light_positions, shading_normal (..., 3) -> colour (..., Nc)
        raise NotImplementedError

    def render_options(self, **kwargs) -> dict:
        """Keyword arguments for every call of one render: the random choices that all its
        samples share (e.g. a shading mode), drawn once so that a render done in pieces (and
        re-rendered for its backward pass) uses the same. ``kwargs``: the render's own."""
        return {}

    def export(self, *args, **kwargs):
        """Per-vertex attributes for mesh export (``{"albedo": [..., 3]}``)."""
        return {}

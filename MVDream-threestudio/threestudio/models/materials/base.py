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
        raise NotImplementedError

    def export(self, *args, **kwargs):
        """Per-vertex attributes for mesh export (``{"albedo": [..., 3]}``)."""
        return {}

"""Exporters (threestudio ``models/exporters/base.py``): turn the trained geometry and material
into assets. ``system.exporter_type`` names one, ``system.exporter`` is its config."""
from dataclasses import dataclass

from ...utils.base import BaseObject


class Exporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        save_video: bool = False  # threestudio's key; --export writes no video here

    cfg: Config

    def configure(self, geometry, material, background=None) -> None:
        self.geometry = geometry
        self.material = material
        self.background = background

    def __call__(self, *args, **kwargs):
        raise NotImplementedError


"""Background base class: colour for each (normalised) ray direction."""
from dataclasses import dataclass

from threestudio.utils.base import BaseModule


class BaseBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def construct(self, dirs):
        """dirs [B, H, W, 3] -> colours [B, H, W, Nc]."""
        raise NotImplementedError

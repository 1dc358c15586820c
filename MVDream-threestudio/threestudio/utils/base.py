"""Base classes: every registered module has a dataclass ``Config`` and ``update_step``."""
from dataclasses import dataclass
from typing import Any, Optional

from mindspore import nn

from .config import parse_structured


class Updateable:
    """Objects whose behaviour changes with the training step (schedules, grids)."""

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        for child in self._updateable_children():
            child.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        """Override to react to the step; children are updated first."""

    def _updateable_children(self):
        if isinstance(self, nn.Cell):
            return [c for c in self.cells() if isinstance(c, Updateable)]
        return [v for v in vars(self).values() if isinstance(v, Updateable)]


class BaseObject(Updateable):
    """A configurable non-Cell object (data modules, prompt processors)."""

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(self, cfg: Optional[Any] = None, *args, **kwargs):
        self.cfg = parse_structured(self.Config, cfg)
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs):
        pass


class BaseModule(nn.Cell, Updateable):
    """A configurable Cell (geometry, materials, backgrounds, renderers, guidance)."""

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(self, cfg: Optional[Any] = None, *args, **kwargs):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs):
        pass

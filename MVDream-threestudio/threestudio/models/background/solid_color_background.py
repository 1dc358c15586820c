"""``solid-color-background``: a constant (optionally learned) colour."""
import random
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from mindspore import Parameter, Tensor, ops

import threestudio
from threestudio.models.background.base import BaseBackground


def random_colors(batch: int, n_output_dims: int) -> Tensor:
    """One uniform random colour per batch element, shaped [B, 1, 1, Nc] for broadcasting."""
    return Tensor(np.random.rand(batch, 1, 1, n_output_dims).astype(np.float32))


@threestudio.register("solid-color-background")
class SolidColorBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: Tuple = (1.0, 1.0, 1.0)
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

    cfg: Config

    def configure(self) -> None:
        color = Tensor(np.asarray(self.cfg.color, np.float32))
        self.env_color = Parameter(color, name="env_color") if self.cfg.learned else color

    def construct(self, dirs):
        # dirs (B, H, W, 3) -> colours (B, H, W, Nc)
        shape = dirs.shape[:-1] + (self.cfg.n_output_dims,)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            return ops.broadcast_to(random_colors(dirs.shape[0], self.cfg.n_output_dims), shape)
        return ops.broadcast_to(self.env_color, shape)

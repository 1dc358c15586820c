"""``neural-environment-map-background``: colour = MLP(SH(direction)), with random solid-colour aug."""
import random
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
from mindspore import Tensor, ops

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.models.background.solid_color_background import random_colors
from threestudio.models.networks import get_encoding, get_mlp
from threestudio.utils.activations import get_activation


@threestudio.register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
        mlp_network_config: dict = field(default_factory=lambda: {
            "otype": "VanillaMLP",
            "activation": "ReLU",
            "n_neurons": 16,
            "n_hidden_layers": 2,
        })
        random_aug: bool = False
        random_aug_prob: float = 0.5
        eval_color: Optional[Tuple[float, float, float]] = None
        # MVDream: one random colour shared by all views of the batch (they are one object)
        share_aug_bg: bool = False

    cfg: Config

    def configure(self) -> None:
        self.encoding = get_encoding(3, self.cfg.dir_encoding_config)
        self.network = get_mlp(self.encoding.n_output_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
        self.color_activation = get_activation(self.cfg.color_activation)

    def construct(self, dirs):
        # dirs (B, H, W, 3) -> colours (B, H, W, Nc)
        n_out = self.cfg.n_output_dims
        shape = dirs.shape[:-1] + (n_out,)
        if not self.training and self.cfg.eval_color is not None:
            return ops.broadcast_to(Tensor(np.asarray(self.cfg.eval_color, np.float32)), shape)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            colors = random_colors(1 if self.cfg.share_aug_bg else dirs.shape[0], n_out)
            return ops.broadcast_to(colors, shape)
        # dirs are normalised: (-1, 1) -> (0, 1) for the SH encoding
        color = self.network(self.encoding((dirs.reshape(-1, 3) + 1.0) / 2.0))
        return self.color_activation(color).reshape(shape)

"""``no-material``: colour = activation(features), optionally through a small MLP."""
import logging
from dataclasses import dataclass
from typing import Optional

from mindspore import ops

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import get_mlp
from threestudio.utils.activations import get_activation

log = logging.getLogger(__name__)


@threestudio.register("no-material")
class NoMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    cfg: Config

    def configure(self) -> None:
        self.requires_normal = self.cfg.requires_normal
        self.color_activation = get_activation(self.cfg.color_activation)
        self.use_network = self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None
        if self.use_network:
            self.network = get_mlp(self.cfg.input_feature_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)

    def construct(self, features, viewdirs=None, shading_normal=None, light_positions=None, positions=None,
                  **kwargs):
        # features (..., Nf) -> colour (..., n_output_dims); the other inputs (..., 3) are unused
        if self.use_network:
            flat = self.network(features.reshape(-1, features.shape[-1]))
            features = flat.reshape(features.shape[:-1] + (self.cfg.n_output_dims,))
        elif features.shape[-1] != self.cfg.n_output_dims:
            raise ValueError(f"Expected {self.cfg.n_output_dims} output dims, only got {features.shape[-1]} dims input.")
        return self.color_activation(features)

    def export(self, features, **kwargs):
        color = ops.clamp(self(features, **kwargs), 0.0, 1.0)
        if color.shape[-1] > 3:
            log.warning("Output color has >3 channels, treating the first 3 as RGB")
        return {"albedo": color[..., :3]}

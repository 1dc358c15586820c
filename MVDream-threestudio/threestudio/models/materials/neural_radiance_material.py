"""``neural-radiance-material`` (threestudio): colour = MLP(features, encoded view direction).

The geometry's features (``input_feature_dims`` of them) and the tcnn encoding of the sample's
view direction (normalised, mapped to [0, 1]) go through a small MLP and ``color_activation``.
A mesh export takes the colour seen head-on (view direction = minus the surface normal), the
same rule as ``implicit-volume``'s ``dir_encoding_config``: see ``export``.
"""
from dataclasses import dataclass, field
from typing import Optional

from mindspore import Tensor, ops

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import DirectionEncoding, get_mlp
from threestudio.utils.activations import get_activation


@threestudio.register("neural-radiance-material")
class NeuralRadianceMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        input_feature_dims: int = 8
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
        mlp_network_config: dict = field(default_factory=lambda: {
            "otype": "FullyFusedMLP",
            "activation": "ReLU",
            "n_neurons": 16,
            "n_hidden_layers": 2,
        })

    cfg: Config

    def configure(self) -> None:
        self.encoding = DirectionEncoding(self.cfg.dir_encoding_config)
        self.n_input_dims = self.cfg.input_feature_dims + self.encoding.n_output_dims
        self.network = get_mlp(self.n_input_dims, 3, self.cfg.mlp_network_config)
        self.color_activation = get_activation(self.cfg.color_activation)

    def construct(self, features: Tensor, viewdirs: Tensor, **kwargs) -> Tensor:
        # features (*B, Nf), viewdirs (*B, 3) -> rgb (*B, 3)
        if features.shape[-1] != self.cfg.input_feature_dims:
            raise ValueError(f"neural-radiance-material expects {self.cfg.input_feature_dims} feature dims "
                             f"(input_feature_dims), got {features.shape[-1]}; set the geometry's n_feature_dims to match")
        inputs = ops.cat([features.reshape(-1, features.shape[-1]), self.encoding(viewdirs.reshape(-1, 3))], axis=-1)
        color = self.network(inputs).reshape(features.shape[:-1] + (3,))
        return self.color_activation(color)

    def export(self, features: Tensor, viewdirs: Optional[Tensor] = None, **kwargs):
        """Albedo for a mesh export: the colour seen head-on, ``viewdirs`` = minus the outward
        surface normal at each point (the mesh's vertex normals, or the geometry's
        ``head_on_viewdirs``, which ``implicit-volume.export`` returns as ``viewdirs``)."""
        if viewdirs is None:
            raise ValueError("neural-radiance-material exports the colour seen head-on: pass viewdirs "
                             "(minus the surface normals) to material.export")
        return {"albedo": ops.clamp(self(features, viewdirs), 0.0, 1.0)}

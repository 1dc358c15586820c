"""``implicit-volume``: hash-grid density + feature field with a blob density prior (threestudio).

Port option ``dir_encoding_config`` (default null: the original xyz-only feature field): the
view directions of the samples are encoded (e.g. tcnn SphericalHarmonics) and concatenated to the
xyz encoding before ``feature_network``, so the colour can depend on the view. A mesh export
then takes the colour seen head-on (see ``export``).
"""
import logging
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
from mindspore import Tensor, ops

import threestudio
from threestudio.models.geometry.base import BaseGeometry, BaseImplicitGeometry, contract_to_unisphere
from threestudio.models.networks import DirectionEncoding, get_encoding, get_mlp
from threestudio.utils.activations import get_activation
from threestudio.utils.config import ConfigError

log = logging.getLogger(__name__)


def normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, dim=-1)``: x / max(|x|, eps)."""
    return x / ops.clamp(ops.norm(x, dim=-1, keepdim=True), min=eps)


def _blob_magic3d(sq_dist, scale, std):
    return scale * (1 - ops.sqrt(sq_dist) / std)


def _blob_dreamfusion(sq_dist, scale, std):
    return scale * ops.exp(-0.5 * sq_dist / std ** 2)


# Pre-activation density priors: f(|x|^2, scale, std) -> bias.
_DENSITY_BIASES = {"blob_magic3d": _blob_magic3d, "blob_dreamfusion": _blob_dreamfusion}

_NORMAL_TYPES = (None, "finite_difference", "finite_difference_laplacian", "pred", "analytic")


@threestudio.register("implicit-volume")
class ImplicitVolume(BaseImplicitGeometry):
    @dataclass
    class Config(BaseImplicitGeometry.Config):
        n_input_dims: int = 3
        n_feature_dims: int = 3
        density_activation: Optional[str] = "softplus"
        density_bias: Union[float, str] = "blob_magic3d"
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        pos_encoding_config: dict = field(default_factory=lambda: {
            "otype": "HashGrid",
            "n_levels": 16,
            "n_features_per_level": 2,
            "log2_hashmap_size": 19,
            "base_resolution": 16,
            "per_level_scale": 1.447269237440378,
        })
        mlp_network_config: dict = field(default_factory=lambda: {
            "otype": "VanillaMLP",
            "activation": "ReLU",
            "output_activation": "none",
            "n_neurons": 64,
            "n_hidden_layers": 1,
        })
        normal_type: Optional[str] = "finite_difference"
        finite_difference_normal_eps: float = 0.01
        # {min_anneal_step, max_anneal_step, start_val, end_val}: linearly anneal density_blob_std
        anneal_density_blob_std_config: Optional[dict] = None
        isosurface_threshold: Union[float, str] = 25.0
        # port option: encoding of the view directions fed to feature_network with the xyz encoding
        # (null: xyz only, as the original; checkpoints of either layout only load into the same)
        dir_encoding_config: Optional[dict] = None

    cfg: Config

    def configure(self) -> None:
        super().configure()
        cfg = self.cfg
        if cfg.normal_type not in _NORMAL_TYPES:
            raise ConfigError(f"unknown normal_type '{cfg.normal_type}'; known: {_NORMAL_TYPES}")
        if isinstance(cfg.density_bias, str) and cfg.density_bias not in _DENSITY_BIASES:
            raise ConfigError(f"unknown density_bias '{cfg.density_bias}'; known: {sorted(_DENSITY_BIASES)} or a float")
        self.density_activation = get_activation(cfg.density_activation)
        self.density_blob_std = cfg.density_blob_std
        self.encoding = get_encoding(cfg.n_input_dims, cfg.pos_encoding_config)
        self.density_network = get_mlp(self.encoding.n_output_dims, 1, cfg.mlp_network_config)
        self.dir_encoding = None
        n_feature_inputs = self.encoding.n_output_dims
        if cfg.dir_encoding_config is not None:
            if cfg.n_feature_dims <= 0:
                raise ConfigError("implicit-volume: dir_encoding_config needs n_feature_dims > 0")
            self.dir_encoding = DirectionEncoding(cfg.dir_encoding_config)
            n_feature_inputs += self.dir_encoding.n_output_dims
        if cfg.n_feature_dims > 0:
            self.feature_network = get_mlp(n_feature_inputs, cfg.n_feature_dims, cfg.mlp_network_config)
        if cfg.normal_type == "pred":
            self.normal_network = get_mlp(self.encoding.n_output_dims, 3, cfg.mlp_network_config)
        eps = cfg.finite_difference_normal_eps
        # +x, -x, +y, -y, +z, -z
        self.fd_offsets = Tensor(np.concatenate([np.eye(3), -np.eye(3)], 1).reshape(6, 3).astype(np.float32) * eps)
        self._warned_analytic = False

    # ------------------------------------------------------------------ density

    def get_activated_density(self, points: Tensor, density: Tensor):
        """(raw, activated) density; ``points`` in the original (unscaled) coordinates."""
        bias = self.cfg.density_bias
        if isinstance(bias, str):
            sq_dist = (points * points).sum(axis=-1, keepdims=True)
            bias = _DENSITY_BIASES[bias](sq_dist, self.cfg.density_blob_scale, self.density_blob_std)
        raw = density + bias
        return raw, self.density_activation(raw)

    def _encode(self, points: Tensor) -> Tensor:
        """Encoding of [*N, 3] world points as [prod(N), n_enc]."""
        x = contract_to_unisphere(points, self.bbox, self.unbounded)
        return self.encoding(x.reshape(-1, self.cfg.n_input_dims))

    def forward_density(self, points: Tensor) -> Tensor:
        # points (..., 3) -> density (..., 1)
        raw = self.density_network(self._encode(points)).reshape(points.shape[:-1] + (1,))
        return self.get_activated_density(points, raw)[1]

    # ------------------------------------------------------------------ forward

    def construct(self, points: Tensor, output_normal: bool = False, viewdirs: Optional[Tensor] = None):
        # points: (*N, 3); viewdirs: (*N, 3) ray directions, used with dir_encoding_config
        # returns density (*N, 1), features (*N, n_feature_dims)[, normal, shading_normal (*N, 3)]
        lead = points.shape[:-1]
        enc = self._encode(points)
        raw = self.density_network(enc).reshape(lead + (1,))
        _, density = self.get_activated_density(points, raw)
        output = {"density": density}
        if self.cfg.n_feature_dims > 0:
            output["features"] = self._features(enc, viewdirs).reshape(lead + (self.cfg.n_feature_dims,))
        if output_normal:
            normal = self._normal(points, enc)
            output.update({"normal": normal, "shading_normal": normal})
        return output

    def _features(self, enc: Tensor, viewdirs: Optional[Tensor]) -> Tensor:
        """feature_network on the xyz encoding [M, n_enc], plus the encoded view directions."""
        if self.dir_encoding is None:
            return self.feature_network(enc)
        if viewdirs is None:
            raise ValueError("implicit-volume with dir_encoding_config needs the view directions (viewdirs) "
                             "of its points")
        return self.feature_network(ops.cat([enc, self.dir_encoding(viewdirs.reshape(-1, 3))], axis=-1))

    def _normal(self, points: Tensor, enc: Tensor) -> Tensor:
        normal_type = self.cfg.normal_type
        if normal_type == "pred":
            return normalize(self.normal_network(enc).reshape(points.shape[:-1] + (3,)))
        if normal_type == "analytic" and not self._warned_analytic:
            # MindSpore 2.7.1 (PyNative) gets second-order gradients w.r.t. parameters wrong
            # through Gather and BatchMatMul (and ops.matmul), so a normal built from an inner
            # grad would train the field incorrectly: use central differences instead.
            log.warning("normal_type 'analytic' falls back to central finite differences "
                        "(MindSpore cannot differentiate the hash grid twice correctly)")
            self._warned_analytic = True
        if normal_type is None:
            raise ValueError("output_normal=True needs a normal_type (got None)")
        return self.finite_difference_normal(points)

    def finite_difference_normal(self, points: Tensor) -> Tensor:
        """-grad(density) / |grad| by central differences (6 density evaluations per point)."""
        eps = self.cfg.finite_difference_normal_eps
        r = self.cfg.radius
        offset_points = ops.clamp(points[..., None, :] + self.fd_offsets, -r, r)  # [*N, 6, 3]
        d = self.forward_density(offset_points)[..., 0]  # [*N, 6]: +x -x +y -y +z -z
        grad = (d[..., 0::2] - d[..., 1::2]) * (0.5 / eps)
        return normalize(-grad)

    # ------------------------------------------------------------------ isosurface / export

    def forward_field(self, points: Tensor):
        if self.cfg.isosurface_deformable_grid:
            log.warning("%s does not support isosurface_deformable_grid; ignoring", type(self).__name__)
        return self.forward_density(points), None

    def forward_level(self, field: Tensor, threshold: float) -> Tensor:
        return -(field - threshold)

    def export(self, points: Tensor, viewdirs: Optional[Tensor] = None, **kwargs):
        """Features at surface points (*N, 3) for a mesh export. With dir_encoding_config the
        features depend on the view: the export takes the colour seen head-on, ``viewdirs`` =
        ``head_on_viewdirs(points)`` unless given (e.g. minus the mesh's vertex normals). The
        directions used (given or computed) are returned with the features, so that
        ``material.export(**geometry.export(points, viewdirs))`` sees the same ones."""
        if self.cfg.n_feature_dims == 0:
            return {}
        if viewdirs is None and self.dir_encoding is not None:
            viewdirs = self.head_on_viewdirs(points)
        out = {} if viewdirs is None else {"viewdirs": viewdirs}
        features = self._features(self._encode(points), out.get("viewdirs"))
        out["features"] = features.reshape(points.shape[:-1] + (self.cfg.n_feature_dims,))
        return out

    def head_on_viewdirs(self, points: Tensor) -> Tensor:
        """The export's view direction at points (*N, 3): looking straight at the surface, i.e.
        minus the outward normal of the density (central differences, as ``normal_type``
        finite_difference), whatever ``normal_type`` is configured."""
        return -self.finite_difference_normal(points)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        anneal = self.cfg.anneal_density_blob_std_config
        if anneal is None:
            return
        lo, hi = anneal["min_anneal_step"], anneal["max_anneal_step"]
        if lo <= global_step <= hi:
            t = (global_step - lo) / max(hi - lo, 1)
            self.density_blob_std = anneal["start_val"] + t * (anneal["end_val"] - anneal["start_val"])

    @staticmethod
    def create_from(other: BaseGeometry, cfg=None, copy_net: bool = True, **kwargs) -> "ImplicitVolume":
        if not isinstance(other, ImplicitVolume):
            raise TypeError(f"Cannot create {ImplicitVolume.__name__} from {other.__class__.__name__}")
        instance = ImplicitVolume(cfg, **kwargs)
        names = ["encoding", "density_network"]
        if copy_net:
            if (instance.cfg.n_feature_dims > 0 and other.cfg.n_feature_dims == instance.cfg.n_feature_dims
                    and other.cfg.dir_encoding_config == instance.cfg.dir_encoding_config):
                names.append("feature_network")
            if instance.cfg.normal_type == "pred" and other.cfg.normal_type == "pred":
                names.append("normal_network")
        for name in names:
            src = dict(getattr(other, name).parameters_and_names())
            for pname, param in getattr(instance, name).parameters_and_names():
                param.set_data(src[pname].value().copy())
        return instance

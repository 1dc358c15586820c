"""Input encodings and MLPs (threestudio's ``networks.py`` without tiny-cuda-nn).

``get_encoding(n_input_dims, config)`` and ``get_mlp(n_input_dims, n_output_dims, config)``
accept the same config dicts as threestudio (tcnn ``otype`` names included). Encodings
expect inputs in [0, 1]. The multiresolution hash grid reproduces tcnn's ``HashGrid``
(layout of the parameter vector, level scales, dense/hashed indexing, 0.5 offset) and
runs on a swappable backend, see :mod:`threestudio.models.hashgrid`.
"""
import math
from typing import Any, Dict

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Uniform, initializer

from threestudio.models import hashgrid
from threestudio.utils.activations import get_activation
from threestudio.utils.base import Updateable
from threestudio.utils.config import ConfigError, config_to_primitive

# ----------------------------------------------------------------------------- helpers

# Keys every tcnn encoding config may carry; threestudio puts ``include_xyz`` in it too.
_COMMON_ENCODING_KEYS = {"otype", "n_dims_to_encode", "include_xyz"}


def _checked(config, otype_cls) -> Dict[str, Any]:
    """Plain dict of ``config``; unknown keys raise (tcnn would silently ignore typos)."""
    cfg = dict(config_to_primitive(config))
    unknown = set(cfg) - _COMMON_ENCODING_KEYS - set(otype_cls.config_keys)
    if unknown:
        raise ConfigError(
            f"unknown config key '{sorted(unknown)[0]}' for {otype_cls.__name__} (otype {cfg.get('otype')}); "
            f"valid keys: {', '.join(sorted(_COMMON_ENCODING_KEYS | set(otype_cls.config_keys)))}")
    return cfg


class Encoding(nn.Cell, Updateable):
    """Base of the encodings: maps [N, n_input_dims] in [0, 1] to [N, n_output_dims]."""

    config_keys: tuple = ()
    n_input_dims: int
    n_output_dims: int


_ENCODINGS: Dict[str, type] = {}


def _register_encoding(*otypes):
    def deco(cls):
        for name in otypes:
            _ENCODINGS[name.lower()] = cls
        return cls

    return deco


# ----------------------------------------------------------------------------- hash grid


@_register_encoding("HashGrid", "Grid", "DenseGrid", "TiledGrid")
class HashGridEncoding(Encoding):
    """tcnn multiresolution grid (``otype`` HashGrid / Grid with ``type`` Hash, Dense or Tiled).

    ``params`` is one flat Parameter with tcnn's layout (level offsets padded to 8 entries,
    ``n_features_per_level`` values per entry), initialised U(-1e-4, 1e-4) as tcnn does.
    The lookup itself is delegated to a backend from :mod:`threestudio.models.hashgrid`
    (``implementation`` argument, else the config's ``backend``: auto / ops / cpp, see there) so
    that a compiled kernel can replace the pure-ops one without touching the parameters.
    """

    config_keys = ("type", "n_levels", "n_features", "n_features_per_level", "log2_hashmap_size",
                   "base_resolution", "per_level_scale", "interpolation", "stochastic_interpolation",
                   "backend")

    def __init__(self, n_input_dims: int, config, implementation: str = None):
        super().__init__()
        cfg = _checked(config, type(self))
        otype = cfg.get("otype", "HashGrid").lower()
        default_type = {"densegrid": "Dense", "tiledgrid": "Tiled"}.get(otype, "Hash")
        if cfg.get("interpolation", "Linear").lower() != "linear":
            raise ConfigError(f"HashGrid: only 'Linear' interpolation is implemented, got {cfg['interpolation']}")
        if cfg.get("stochastic_interpolation", False):
            raise ConfigError("HashGrid: stochastic_interpolation is not implemented")
        n_features_per_level = int(cfg.get("n_features_per_level", 2))
        if "n_features" in cfg:
            if "n_levels" in cfg:
                raise ConfigError("HashGrid: n_features and n_levels may not both be given")
            n_levels = int(cfg["n_features"]) // n_features_per_level
        else:
            n_levels = int(cfg.get("n_levels", 16))
        self.layout = hashgrid.GridLayout(
            n_input_dims=n_input_dims,
            n_levels=n_levels,
            n_features_per_level=n_features_per_level,
            log2_hashmap_size=int(cfg.get("log2_hashmap_size", 19)),
            base_resolution=int(cfg.get("base_resolution", 16)),
            per_level_scale=float(cfg.get("per_level_scale", 2.0)),
            grid_type=cfg.get("type", default_type),
        )
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_levels * n_features_per_level
        self.params = Parameter(initializer(Uniform(1e-4), (self.layout.n_params,), ms.float32), name="params")
        self.set_implementation(implementation or hashgrid.requested_backend(cfg.get("backend")))

    def set_implementation(self, name: str = None):
        """Switch the lookup backend ("ops", "cpp", or None/"auto": see ``hashgrid.make_backend``)."""
        self.backend = hashgrid.make_backend(self.layout, name)

    def construct(self, x):
        return self.backend(x, self.params)


@_register_encoding("ProgressiveBandHashGrid")
class ProgressiveBandHashGrid(HashGridEncoding):
    """Hash grid whose finer levels are switched on every ``update_steps`` steps (threestudio)."""

    config_keys = HashGridEncoding.config_keys + ("start_level", "start_step", "update_steps")

    def __init__(self, n_input_dims: int, config, implementation: str = None):
        cfg = dict(config_to_primitive(config))
        super().__init__(n_input_dims, {**cfg, "otype": "HashGrid"}, implementation)
        self.n_features_per_level = self.layout.n_features_per_level
        self.start_level = int(cfg["start_level"])
        self.start_step = int(cfg["start_step"])
        self.update_steps = int(cfg["update_steps"])
        self.current_level = self.start_level
        # As in threestudio the mask is all zeros until the first update_step call.
        self.mask = Tensor(np.zeros(self.n_output_dims, np.float32))

    def construct(self, x):
        return self.backend(x, self.params) * self.mask

    def update_step(self, epoch, global_step, on_load_weights=False):
        level = min(self.start_level + max(global_step - self.start_step, 0) // self.update_steps,
                    self.layout.n_levels)
        self.current_level = level
        mask = np.zeros(self.n_output_dims, np.float32)
        mask[: level * self.n_features_per_level] = 1.0
        self.mask = Tensor(mask)


# ----------------------------------------------------------------------------- other encodings

# tcnn's real spherical harmonics (``sh_enc``), bands l = 0..3 as its polynomials, index l*l + l + m.
_SH_BASIS = (
    lambda x, y, z: 0.28209479177387814 * ops.ones_like(x),
    lambda x, y, z: -0.48860251190291987 * y,
    lambda x, y, z: 0.48860251190291987 * z,
    lambda x, y, z: -0.48860251190291987 * x,
    lambda x, y, z: 1.0925484305920792 * x * y,
    lambda x, y, z: -1.0925484305920792 * y * z,
    lambda x, y, z: 0.94617469575755997 * z * z - 0.31539156525251999,
    lambda x, y, z: -1.0925484305920792 * x * z,
    lambda x, y, z: 0.54627421529603959 * (x * x - y * y),
    lambda x, y, z: 0.59004358992664352 * y * (-3.0 * x * x + y * y),
    lambda x, y, z: 2.8906114426405538 * x * y * z,
    lambda x, y, z: 0.45704579946446572 * y * (1.0 - 5.0 * z * z),
    lambda x, y, z: 0.3731763325901154 * z * (5.0 * z * z - 3.0),
    lambda x, y, z: 0.45704579946446572 * x * (1.0 - 5.0 * z * z),
    lambda x, y, z: 1.4453057213202769 * z * (x * x - y * y),
    lambda x, y, z: 0.59004358992664352 * x * (-x * x + 3.0 * y * y),
)


def _sh_high_band_factors(degree: int):
    """tcnn's bands 4 .. degree-1 as products of linear factors in z (float64 -> float32 pairs).

    tcnn's polynomials are the ones Sloan's recurrences generate ("Stupid Spherical Harmonics
    Tricks", appendix A1): ``Y_l^m = N_l^m Q_l^|m|(z) (Re, Im)(x + i y)^|m|`` (Im for m < 0),
    ``Q_m^m = (-1)^m (2m - 1)!!`` (Condon-Shortley phase),
    ``Q_l^m = ((2l - 1) z Q_{l-1}^m - (l + m - 1) Q_{l-2}^m) / (l - m)``. Written out term by
    term (or run as the recurrence) in float32, bands 6 and 7 lose 1e-6 to 5e-6 to cancellation.
    ``N_l^m Q_l^m`` has l - m real roots in (-1, 1), so it is evaluated as
    ``lead * prod((z - r_hi) - r_lo)`` with each root split into two float32 parts: ~3e-7.
    Returns {(l, m): (lead, [(r_hi, r_lo), ...])} for m >= 0.
    """
    factors = {}
    for m in range(degree):
        n_mm = math.sqrt((2 * m + 1) / (4 * math.pi) / math.factorial(2 * m) * (2.0 if m else 1.0))
        q_prev, q = np.zeros(1), np.array([(-1) ** m * math.prod(range(2 * m - 1, 0, -2)) * n_mm])
        for l in range(m, degree):
            if l > m:
                n_ratio = math.sqrt((2 * l + 1) / (2 * l - 1) * (l - m) / (l + m))  # N_l^m / N_{l-1}^m
                n_ratio2 = (n_ratio * math.sqrt((2 * l - 1) / (2 * l - 3) * (l - 1 - m) / (l - 1 + m))
                            if l - 2 >= m else 0.0)
                q_new = np.polynomial.polynomial.polymulx(q) * (2 * l - 1) * n_ratio / (l - m)
                q_new[:len(q_prev)] -= q_prev * (l + m - 1) * n_ratio2 / (l - m)
                q_prev, q = q, q_new
            if l >= 4:
                roots = np.sort(np.roots(q[::-1]).real)
                factors[l, m] = (float(q[-1]), [(float(np.float32(r)), float(r - np.float32(r))) for r in roots])
    return factors


@_register_encoding("SphericalHarmonics")
class SphericalHarmonicsEncoding(Encoding):
    """tcnn SphericalHarmonics: directions come mapped to [0, 1] as ``(d + 1) / 2`` (and are
    mapped back with ``2 x - 1``); ``degree`` d in 1..8 gives d^2 outputs in tcnn's order."""

    config_keys = ("degree",)

    def __init__(self, n_input_dims: int, config):
        super().__init__()
        cfg = _checked(config, type(self))
        self.degree = int(cfg.get("degree", 4))
        if n_input_dims != 3:
            raise ConfigError("SphericalHarmonics encodes 3-D directions")
        if not 1 <= self.degree <= 8:
            raise ConfigError(f"SphericalHarmonics: degree must be in 1..8 (as tcnn), got {self.degree}")
        self.n_input_dims, self.n_output_dims = 3, self.degree ** 2
        self.factors = _sh_high_band_factors(self.degree)

    def construct(self, x):
        d = x * 2.0 - 1.0  # [N, 3]
        xs, ys, zs = d[:, 0], d[:, 1], d[:, 2]
        out = [f(xs, ys, zs) for f in _SH_BASIS[: self.n_output_dims]]
        if self.degree > 4:
            out += self._high_bands(xs, ys, zs)
        return ops.stack(out, axis=-1)  # [N, degree^2]

    def _high_bands(self, xs, ys, zs):
        """Bands 4 .. degree-1, in tcnn's order."""
        re, im = [ops.ones_like(xs)], [ops.zeros_like(xs)]  # (Re, Im)(x + i y)^m
        for _ in range(1, self.degree):
            re, im = re + [xs * re[-1] - ys * im[-1]], im + [xs * im[-1] + ys * re[-1]]
        out = [None] * (self.n_output_dims - 16)
        for (l, m), (lead, roots) in self.factors.items():
            value = ops.full_like(zs, lead)
            for r_hi, r_lo in roots:
                value = value * ((zs - r_hi) - r_lo)
            i = l * l + l - 16
            if m == 0:
                out[i] = value
            else:
                out[i + m], out[i - m] = value * re[m], value * im[m]
        return out


@_register_encoding("Frequency")
class FrequencyEncoding(Encoding):
    """tcnn Frequency: per input dim d, octave k, (sin, cos)(2^k pi x_d); output order (d, k, sin/cos).

    ``x 2^k`` is exact in float32 (as tcnn's ``scalbnf``); it is reduced modulo 2 before the
    multiplication by pi, so the highest octaves keep float32 accuracy (pi * 2^11 * x would
    lose ~1e-3 of its phase to rounding)."""

    config_keys = ("n_frequencies",)

    def __init__(self, n_input_dims: int, config):
        super().__init__()
        cfg = _checked(config, type(self))
        self.n_frequencies = int(cfg.get("n_frequencies", 12))
        self.scales = Tensor((2.0 ** np.arange(self.n_frequencies)).astype(np.float32))
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims * self.n_frequencies * 2

    def construct(self, x):
        y = x[:, :, None] * self.scales  # [N, D, K]
        y = y - 2.0 * ops.stop_gradient(ops.round(y * 0.5))  # in [-1, 1], exact; same sin and cos
        arg = y * math.pi
        return ops.stack([ops.sin(arg), ops.cos(arg)], axis=-1).reshape(x.shape[0], -1)


@_register_encoding("ProgressiveBandFrequency")
class ProgressiveBandFrequency(Encoding):
    """threestudio's frequency encoding: (sin, cos)(2^k x), bands faded in over ``n_masking_step``."""

    config_keys = ("n_frequencies", "n_masking_step")

    def __init__(self, n_input_dims: int, config):
        super().__init__()
        cfg = _checked(config, type(self))
        self.n_frequencies = int(cfg["n_frequencies"])
        self.n_masking_step = int(cfg.get("n_masking_step", 0))
        self.freqs = Tensor((2.0 ** np.arange(self.n_frequencies)).astype(np.float32))
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims * self.n_frequencies * 2
        self.update_step(None, None)

    def construct(self, x):
        arg = x[:, None, :] * self.freqs[:, None]  # [N, K, D]; output order: band, (sin, cos), dim
        out = ops.stack([ops.sin(arg), ops.cos(arg)], axis=2) * self.mask[:, None, None]
        return out.reshape(x.shape[0], -1)

    def update_step(self, epoch, global_step, on_load_weights=False):
        if self.n_masking_step <= 0 or global_step is None:
            mask = np.ones(self.n_frequencies, np.float32)
        else:
            t = np.clip(global_step / self.n_masking_step * self.n_frequencies - np.arange(self.n_frequencies), 0, 1)
            mask = ((1.0 - np.cos(np.pi * t)) / 2.0).astype(np.float32)
        self.mask = Tensor(mask)


@_register_encoding("Identity")
class IdentityEncoding(Encoding):
    config_keys = ("scale", "offset")

    def __init__(self, n_input_dims: int, config):
        super().__init__()
        cfg = _checked(config, type(self))
        self.scale, self.offset = float(cfg.get("scale", 1.0)), float(cfg.get("offset", 0.0))
        self.n_input_dims = self.n_output_dims = n_input_dims

    def construct(self, x):
        return x * self.scale + self.offset


class CompositeEncoding(Encoding):
    """Optionally prepends the raw input mapped to [-1, 1] (threestudio's ``include_xyz``)."""

    def __init__(self, encoding: Encoding, include_xyz: bool = False, xyz_scale: float = 2.0,
                 xyz_offset: float = -1.0):
        super().__init__()
        self.encoding = encoding
        self.include_xyz, self.xyz_scale, self.xyz_offset = include_xyz, xyz_scale, xyz_offset
        self.n_input_dims = encoding.n_input_dims
        self.n_output_dims = int(include_xyz) * encoding.n_input_dims + encoding.n_output_dims

    def construct(self, x):
        enc = self.encoding(x)
        if not self.include_xyz:
            return enc
        return ops.cat([x * self.xyz_scale + self.xyz_offset, enc], axis=-1)


def get_encoding(n_input_dims: int, config) -> CompositeEncoding:
    """Encoding for inputs in [0, 1], wrapped like threestudio (``encoding.encoding.params``)."""
    cfg = dict(config_to_primitive(config))
    otype = str(cfg.get("otype", ""))
    if otype.lower() not in _ENCODINGS:
        raise ConfigError(f"unknown encoding otype '{otype}'; known: {', '.join(sorted(_ENCODINGS))}")
    encoding = _ENCODINGS[otype.lower()](n_input_dims, cfg)
    return CompositeEncoding(encoding, include_xyz=bool(cfg.get("include_xyz", False)))


class DirectionEncoding(Encoding):
    """Encoding of view directions [N, 3] of any length: normalised, then mapped to [0, 1] as
    ``(d + 1) / 2``, the range tcnn's SphericalHarmonics expects (as threestudio's materials)."""

    def __init__(self, config):
        super().__init__()
        self.encoding = get_encoding(3, config)
        self.l2_normalize = ops.L2Normalize(axis=-1, epsilon=1e-24)  # d / max(|d|, 1e-12)
        self.n_input_dims, self.n_output_dims = 3, self.encoding.n_output_dims

    def construct(self, dirs):
        return self.encoding((self.l2_normalize(dirs) + 1.0) / 2.0)


# ----------------------------------------------------------------------------- MLPs


class LinearNoBias(nn.Cell):
    """Bias-free linear layer (tcnn's fully fused MLPs have no biases); weight is (out, in).

    Initialised like ``torch.nn.Linear`` (kaiming-uniform, a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)),
    or U(-bound, bound) when ``bound`` is given.
    """

    def __init__(self, dim_in: int, dim_out: int, bound: float = None):
        super().__init__()
        bound = 1.0 / math.sqrt(dim_in) if bound is None else bound
        self.weight = Parameter(initializer(Uniform(bound), (dim_out, dim_in), ms.float32), name="weight")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        return self.matmul(x, self.weight)


class _Activation(nn.Cell):
    def __init__(self, name):
        super().__init__()
        self.fn = get_activation(name)

    def construct(self, x):
        return self.fn(x)


class VanillaMLP(nn.Cell):
    """``n_hidden_layers`` hidden layers of ``n_neurons``; parameter names ``layers.{0,2,..}.weight``."""

    config_keys = ("otype", "activation", "output_activation", "n_neurons", "n_hidden_layers")

    def __init__(self, dim_in: int, dim_out: int, config: dict):
        super().__init__()
        unknown = set(config) - set(self.config_keys)
        if unknown:
            raise ConfigError(f"unknown config key '{sorted(unknown)[0]}' for {type(self).__name__}; "
                              f"valid keys: {', '.join(self.config_keys)}")
        n_neurons, n_hidden = int(config["n_neurons"]), int(config["n_hidden_layers"])
        act = config.get("activation", "ReLU")
        dims = [dim_in] + [n_neurons] * n_hidden + [dim_out]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(LinearNoBias(a, b, self.init_bound(a, b)))
            if i < n_hidden:
                layers.append(_Activation(act))
        self.layers = nn.SequentialCell(layers)
        self.output_activation = get_activation(config.get("output_activation", None))

    @staticmethod
    def init_bound(dim_in: int, dim_out: int):
        """None: torch.nn.Linear's default (threestudio's VanillaMLP is torch)."""
        return None

    def construct(self, x):
        return self.output_activation(self.layers(x))


class TcnnMLP(VanillaMLP):
    """tcnn's FullyFusedMLP / CutlassMLP: the same bias-free layers, initialised as tcnn does
    (Xavier-uniform, U(+-sqrt(6 / (fan_in + fan_out))), over its widths padded to multiples of
    16). torch's default is ~1.7x smaller per layer, which slows threestudio's small tcnn MLPs
    (neural-radiance-material's 16-neuron network) down."""

    @staticmethod
    def init_bound(dim_in: int, dim_out: int):
        pad = lambda n: -(-n // 16) * 16  # noqa: E731
        return math.sqrt(6.0 / (pad(dim_in) + pad(dim_out)))


_MLPS = {"vanillamlp": VanillaMLP, "fullyfusedmlp": TcnnMLP, "cutlassmlp": TcnnMLP}


def get_mlp(n_input_dims: int, n_output_dims: int, config) -> nn.Cell:
    cfg = dict(config_to_primitive(config))
    otype = str(cfg.get("otype", ""))
    if otype.lower() not in _MLPS:
        raise ConfigError(f"unknown network otype '{otype}'; known: VanillaMLP, FullyFusedMLP, CutlassMLP")
    return _MLPS[otype.lower()](n_input_dims, n_output_dims, cfg)


class NetworkWithInputEncoding(nn.Cell, Updateable):
    def __init__(self, encoding, network):
        super().__init__()
        self.encoding, self.network = encoding, network

    def construct(self, x):
        return self.network(self.encoding(x))


def create_network_with_input_encoding(n_input_dims: int, n_output_dims: int, encoding_config,
                                       network_config) -> NetworkWithInputEncoding:
    encoding = get_encoding(n_input_dims, encoding_config)
    return NetworkWithInputEncoding(encoding, get_mlp(encoding.n_output_dims, n_output_dims, network_config))

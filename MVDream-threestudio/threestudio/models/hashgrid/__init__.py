"""Multiresolution hash-grid lookup backends (tcnn ``HashGrid`` semantics).

``GridLayout`` holds the per-level constants derived from a config exactly as tiny-cuda-nn
does (``grid_scale``, ``grid_resolution``, parameter offsets, dense vs hashed levels).
A backend is a callable ``backend(x [N, D] in [0, 1], params [n_params]) -> [N, L*F]``,
differentiable w.r.t. both arguments. Backends register by name:

* ``"ops"``: pure MindSpore ops (gather + weighted sum); always available.
* ``"cpp"``: a C++ kernel via ``ops.Custom(func_type="aot")``, compiled with g++ on first use.

Which backend a grid uses: ``pos_encoding_config.backend`` (``auto``, ``ops`` or ``cpp``;
default ``auto``), overridden by the environment variable ``THREESTUDIO_HASHGRID_IMPL`` when it
is set. ``auto`` depends on the device target: the C++ kernel on CPU (the pure-ops version when
it cannot be built), pure ops elsewhere (a host ``.so`` is not a device kernel). Every backend
gives the same outputs; the choice is logged (debug level: `launch.py --verbose`).
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# tcnn's coherent prime hash factors (the first one is 1 on purpose: memory coherence).
PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


def _next_multiple(value: int, k: int) -> int:
    return (value + k - 1) // k * k


@dataclass
class GridLayout:
    n_input_dims: int
    n_levels: int
    n_features_per_level: int
    log2_hashmap_size: int
    base_resolution: int
    per_level_scale: float
    grid_type: str = "Hash"
    # derived, one entry per level
    scale: np.ndarray = field(init=False)       # float32: pos = x * scale + 0.5
    resolution: np.ndarray = field(init=False)  # ceil(scale) + 1
    size: np.ndarray = field(init=False)        # table entries of the level
    offset: np.ndarray = field(init=False)      # first entry of the level
    hashed: np.ndarray = field(init=False)      # bool: hash index instead of dense index
    strides: np.ndarray = field(init=False)     # [L, D] dense strides (0: dim past tcnn's loop break)

    def __post_init__(self):
        grid_type = self.grid_type.capitalize()
        if grid_type not in ("Hash", "Dense", "Tiled"):
            raise ValueError(f"invalid grid type {self.grid_type}")
        if not 1 <= self.n_input_dims <= len(PRIMES):
            raise ValueError(f"hash grid supports 1..{len(PRIMES)} input dims")
        self.grid_type = grid_type
        # Computed in float32 as tcnn: exp2f(l * log2f(per_level_scale)) * base_resolution - 1.
        log2_scale = np.log2(np.float32(self.per_level_scale))
        levels = np.arange(self.n_levels, dtype=np.float32)
        self.scale = (np.exp2(levels * log2_scale) * np.float32(self.base_resolution) - np.float32(1.0)).astype(
            np.float32)
        self.resolution = np.ceil(self.scale).astype(np.int64) + 1
        D = self.n_input_dims
        sizes, offsets, hashed, strides = [], [], [], []
        offset = 0
        for res in self.resolution.tolist():
            dense = min(res ** D, np.iinfo(np.uint32).max // 2)
            size = _next_multiple(dense, 8)
            if grid_type == "Hash":
                size = min(size, 1 << self.log2_hashmap_size)
            elif grid_type == "Tiled":
                size = min(size, self.base_resolution ** D)
            # tcnn's grid_index accumulates dims while the running stride <= size.
            strides.append([res ** d if res ** d <= size else 0 for d in range(D)])
            hashed.append(grid_type == "Hash" and res ** D > size)
            sizes.append(size)
            offsets.append(offset)
            offset += size
        self.size = np.array(sizes, np.int64)
        self.offset = np.array(offsets, np.int64)
        self.hashed = np.array(hashed, bool)
        self.strides = np.array(strides, np.int64)
        if np.any(np.diff(self.hashed.astype(int)) < 0):
            raise ValueError("hashed levels must follow dense ones (per_level_scale < 1?)")
        self.n_entries = offset

    @property
    def n_params(self) -> int:
        return self.n_entries * self.n_features_per_level

    @property
    def n_dense_levels(self) -> int:
        return int((~self.hashed).sum())


_BACKENDS = {}


def register_backend(name):
    def deco(factory):
        _BACKENDS[name] = factory
        return factory

    return deco


def available_backends():
    """Names of the backends that can be built here (compiles the C++ kernel if needed)."""
    names = []
    for name in _BACKENDS:
        try:
            _BACKENDS[name].check_available()
            names.append(name)
        except Exception:  # noqa: BLE001 - any build/load failure means "not available"
            pass
    return names


ENV_OVERRIDE = "THREESTUDIO_HASHGRID_IMPL"


def requested_backend(config_value: str = None) -> str:
    """The backend asked for: ``$THREESTUDIO_HASHGRID_IMPL`` if set, else the config's ``backend``
    (default ``auto``)."""
    return os.environ.get(ENV_OVERRIDE) or config_value or "auto"


def auto_candidates(device_target: str) -> tuple:
    """Backends ``auto`` tries on ``device_target``, best first."""
    return ("cpp", "ops") if device_target == "CPU" else ("ops",)


def make_backend(layout: GridLayout, name: str = None, device_target: str = None):
    """The backend ``name`` (None: ``requested_backend()``) for ``layout``; ``auto`` resolves on
    ``device_target`` (None: MindSpore's current one)."""
    name = name or requested_backend()
    if name == "auto":
        if device_target is None:
            import mindspore as ms
            device_target = ms.get_context("device_target")
        for candidate in auto_candidates(device_target):
            try:
                _BACKENDS[candidate].check_available()
            except Exception as err:  # noqa: BLE001 - any build/load failure: try the next one
                log.warning("hash grid backend '%s' unavailable (%s); falling back", candidate, err)
                continue
            log.debug("hash grid backend: %s (auto on %s)", candidate, device_target)
            return _BACKENDS[candidate](layout)
        raise RuntimeError("no hash grid backend available")
    if name not in _BACKENDS:
        raise ValueError(f"unknown hash grid backend '{name}'; known: auto, {', '.join(_BACKENDS)}")
    _BACKENDS[name].check_available()
    return _BACKENDS[name](layout)


from . import ops_backend, cpp_backend  # noqa: E402,F401  (register the backends)

"""C++ hash grid (``hashgrid_kernel.cc``) behind ``ops.Custom(func_type="aot")`` on CPU.

The source is compiled on first use by :func:`mvdream.kernels.build.build_library` (the
build-and-cache of every C++ kernel) into ``$THREESTUDIO_CACHE_DIR`` (default
``~/.cache/threestudio_ms``).
"""
import os
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops
from mvdream.kernels.build import build_library

from . import GridLayout, register_backend

_SOURCE = Path(__file__).with_name("hashgrid_kernel.cc")
_library = None  # path of the built .so, or the exception that prevented building it


def _build() -> str:
    return build_library(_SOURCE, os.environ.get("THREESTUDIO_CACHE_DIR", Path.home() / ".cache" / "threestudio_ms"))


def library() -> str:
    global _library
    if _library is None:
        try:
            _library = _build()
        except Exception as err:  # noqa: BLE001 - remembered and re-raised on each check
            _library = err
    if isinstance(_library, Exception):
        raise _library
    return _library


def kernel_tables(layout: GridLayout):
    """The kernel's per-level inputs: meta int64 [L, 3 + D] (offset, size, hashed, dense strides)
    and scale float32 [L]."""
    meta = np.concatenate([layout.offset[:, None], layout.size[:, None], layout.hashed[:, None].astype(np.int64),
                           layout.strides], axis=1)
    return meta.astype(np.int64), layout.scale.astype(np.float32)


@register_backend("cpp")
class CppHashGrid:
    name = "cpp"

    @staticmethod
    def check_available():
        library()

    def __init__(self, layout: GridLayout):
        if layout.n_features_per_level > 16:  # the kernel's per-point accumulator
            raise ValueError("the C++ hash grid supports up to 16 features per level")
        lib = library()
        D, L, F = layout.n_input_dims, layout.n_levels, layout.n_features_per_level
        meta, scale = kernel_tables(layout)
        self.meta, self.scale = Tensor(meta), Tensor(scale)
        backward = ops.Custom(
            f"{lib}:hashgrid_bwd",
            out_shape=lambda x, p, m, s, g: (p, x),
            out_dtype=lambda x, p, m, s, g: (ms.float32, ms.float32),
            func_type="aot")

        def bprop(x, params, meta, scale, out, dout):
            dparams, dx = backward(x, params, meta, scale, dout)
            return dx, dparams, ops.zeros_like(meta), ops.zeros_like(scale)

        self.forward = ops.Custom(
            f"{lib}:hashgrid_fwd",
            out_shape=lambda x, p, m, s: (x[0], L * F),
            out_dtype=lambda x, p, m, s: ms.float32,
            func_type="aot",
            bprop=bprop)

    def __call__(self, x, params):
        return self.forward(x, params, self.meta, self.scale)

"""The Linear layer's GEMM on CPU through oneDNN's sgemm (``linear.cc``).

MindSpore's CPU MatMul runs its own GEMM, which at few rows (the text encoder multiplies
2 prompts x 77 tokens) reaches about half of the rate of oneDNN's sgemm, the library MindSpore
itself ships (``mindspore/lib/libdnnl.so.2``) for its convolutions. :func:`cpu_linear` returns
the primitive only when the device target is CPU and it builds; otherwise callers keep
``ops.MatMul``. float32, 2-D contiguous input; the backward is MindSpore's MatMul.

:class:`PackedLinear` is the same product for a frozen weight packed once into oneDNN's GEMM
layout (``linear_pack_create``). oneDNN's sgemm otherwise reorders the weight on every call,
about 15% of the text encoder's GEMM time at its 154 rows; the packed copy costs the weight's
size again in memory. Its output is the same bits as :func:`cpu_linear`'s. Forward only.
"""
import ctypes
import functools
import logging
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from . import cpu_kernels_enabled
from .build import build_library

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("linear.cc")


def dnnl_link_args():
    lib_dir = Path(ms.__file__).resolve().parent / "lib"
    if not (lib_dir / "libdnnl.so.2").is_file():
        raise RuntimeError(f"this MindSpore build ships no oneDNN ({lib_dir}/libdnnl.so.2)")
    return [f"-L{lib_dir}", "-l:libdnnl.so.2", f"-Wl,-rpath,{lib_dir}"]


def _linear_primitive(lib):
    """``linear(x (M, K), w (N, K), b (N,)) -> (M, N)`` with its backward."""
    input_grad = ops.MatMul()
    weight_grad = ops.MatMul(transpose_a=True)

    def bprop(x, w, b, out, dout):
        return input_grad(dout, w), weight_grad(dout, x), dout.sum(axis=0)

    return ops.Custom(f"{lib}:linear_fwd", out_shape=lambda x, w, b: [x[0], w[0]],
                      out_dtype=lambda x, w, b: x, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def _library():
    """(path, ctypes handle) of the built kernel, or None. Loading it with ctypes resolves every
    oneDNN symbol it uses now, so a MindSpore without them falls back here, not mid-run."""
    try:
        path = build_library(_SOURCE, link=dnnl_link_args())
        lib = ctypes.CDLL(path)
        lib.linear_pack_create.restype = ctypes.c_int64
        lib.linear_pack_create.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        lib.linear_pack_destroy.argtypes = [ctypes.c_int64]
        return path, lib
    except Exception as err:  # noqa: BLE001 - no compiler or no oneDNN: MindSpore's MatMul instead
        log.warning("oneDNN Linear kernel unavailable (%s); using MindSpore's MatMul", err)
        return None


@functools.lru_cache(maxsize=None)
def _primitive():
    library = _library()
    return _linear_primitive(library[0]) if library is not None else None


@functools.lru_cache(maxsize=None)
def _packed_primitive():
    """``linear_packed(x (M, K), handle (1,) int64, b (N,)) -> (M, N)``, no backward."""
    return ops.Custom(f"{_library()[0]}:linear_packed_fwd", out_shape=lambda x, handle, b: [x[0], b[0]],
                      out_dtype=lambda x, handle, b: x, func_type="aot")


def cpu_linear():
    """The Linear primitive when the device target is CPU and it builds, else None."""
    return _primitive() if cpu_kernels_enabled() else None


class _PackedBuffers:
    """Owns the C++ packed copy of one weight; freed with this object."""

    def __init__(self, lib, weight: np.ndarray):
        self.lib = lib
        self.handle = lib.linear_pack_create(weight.ctypes.data, weight.shape[0], weight.shape[1])
        if self.handle == 0:
            raise MemoryError(f"packing a {weight.shape} Linear weight failed")

    def __del__(self):
        if getattr(self, "handle", 0):
            self.lib.linear_pack_destroy(self.handle)


class PackedLinear(nn.Cell):
    """``x @ weight.T + bias`` with ``weight`` (N, K) copied now into oneDNN's packed layout:
    later changes to ``weight`` are not seen, so build a new one when it changes (as
    :class:`mvdream.graph.GraphFunction`'s ``prepare`` does). ``construct(x (M, K), bias (N,))``
    with M >= 16 rows (callers pad to ``MIN_ROWS``), float32. Not differentiable."""

    def __init__(self, weight: Tensor):
        super().__init__()
        library = _library()
        if library is None or weight.dtype != ms.float32 or weight.ndim != 2:
            raise ValueError("PackedLinear needs the CPU Linear kernel and a 2-D float32 weight")
        self.buffers = _PackedBuffers(library[1], np.ascontiguousarray(weight.asnumpy()))
        self.handle = Tensor(np.array([self.buffers.handle], np.int64))  # a constant of a compiled graph
        self.linear = _packed_primitive()

    def construct(self, x, bias):
        return self.linear(x, self.handle, bias)  # (M, N)

"""The Linear layer's GEMM on CPU through oneDNN's sgemm (``linear.cc``).

MindSpore's CPU MatMul runs its own GEMM, which at few rows (the text encoder multiplies
2 prompts x 77 tokens) reaches about half of the rate of oneDNN's sgemm, the library MindSpore
itself ships (``mindspore/lib/libdnnl.so.2``) for its convolutions. :func:`cpu_linear` returns
the primitive only when the device target is CPU and it builds; otherwise callers keep
``ops.MatMul``. float32, 2-D contiguous input; the backward is MindSpore's MatMul.
"""
import functools
import logging
from pathlib import Path

import mindspore as ms
from mindspore import ops

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
def _primitive():
    try:
        return _linear_primitive(build_library(_SOURCE, link=dnnl_link_args()))
    except Exception as err:  # noqa: BLE001 - no compiler or no oneDNN: MindSpore's MatMul instead
        log.warning("oneDNN Linear kernel unavailable (%s); using MindSpore's MatMul", err)
        return None


def cpu_linear():
    """The Linear primitive when the device target is CPU and it builds, else None."""
    return _primitive() if cpu_kernels_enabled() else None

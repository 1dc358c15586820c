"""Fused CPU kernels for GroupNorm(+SiLU), LayerNorm, erf-GELU and GEGLU (``norm_act.cc``).

MindSpore's own CPU kernels for these are 10-40x slower than PyTorch's; these run them in one
pass each, with a backward that recomputes the statistics from the input (nothing extra is
kept alive for the gradient). :func:`cpu_kernels` returns them only when the device target is
CPU; other targets, and ``MVDREAM_CPU_KERNELS=0``, keep MindSpore's ops (the callers'
fallback). Inputs must be float32 and contiguous.
"""
import functools
import logging
from pathlib import Path

import mindspore as ms
from mindspore import ops

from . import cpu_kernels_enabled
from .build import build_library

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("norm_act.cc")


def _custom(lib, name, out_shape, out_dtype, bprop=None):
    return ops.Custom(f"{lib}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)


class NormActKernels:
    """The Custom primitives, each differentiable:

    ``group_norm(x (N, C, *), gamma (C,), beta (C,), cfg=[groups, eps, silu])``,
    ``layer_norm(x (*, C), gamma, beta, cfg=[eps])``, ``gelu(x)``, ``geglu(h (*, 2D)) -> (*, D)``.
    """

    def __init__(self, lib):
        f32 = ms.float32
        norm_grads = (lambda x, g, b, c, dy: (x, g, b), lambda x, g, b, c, dy: (f32, f32, f32))

        def norm(name):
            backward = _custom(lib, f"{name}_bwd", *norm_grads)

            def bprop(x, gamma, beta, cfg, out, dout):
                dx, dgamma, dbeta = backward(x, gamma, beta, cfg, dout)
                return dx, dgamma, dbeta, ops.zeros_like(cfg)

            return _custom(lib, f"{name}_fwd", lambda x, g, b, c: x, lambda x, g, b, c: f32, bprop)

        self.group_norm = norm("group_norm")
        self.layer_norm = norm("layer_norm")

        gelu_bwd = _custom(lib, "gelu_bwd", lambda x, dy: x, lambda x, dy: f32)
        self.gelu = _custom(lib, "gelu_fwd", lambda x: x, lambda x: f32,
                            lambda x, out, dout: (gelu_bwd(x, dout),))
        geglu_bwd = _custom(lib, "geglu_bwd", lambda h, dy: h, lambda h, dy: f32)
        self.geglu = _custom(lib, "geglu_fwd", lambda h: h[:-1] + [h[-1] // 2], lambda h: f32,
                             lambda h, out, dout: (geglu_bwd(h, dout),))


@functools.lru_cache(maxsize=None)
def _kernels():
    try:
        return NormActKernels(build_library(_SOURCE))
    except Exception as err:  # noqa: BLE001 - no compiler, or it failed: MindSpore's ops instead
        log.warning("fused CPU kernels unavailable (%s); using MindSpore's ops", err)
        return None


def cpu_kernels():
    """The fused kernels when the device target is CPU and they build, else None."""
    return _kernels() if cpu_kernels_enabled() else None

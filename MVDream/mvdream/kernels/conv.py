"""2-D convolution on CPU through oneDNN's direct convolution (``conv.cc``).

MindSpore's CPU Conv2D hands oneDNN plain NCHW tensors, and oneDNN then runs its im2col + GEMM
convolution. The kernel here lets oneDNN choose channel-blocked layouts, which selects its
direct JIT convolution, as PyTorch does. It is the same library MindSpore ships
(``mindspore/lib/libdnnl.so.2``). :func:`cpu_conv` returns a convolution only when the device
target is CPU, the kernel builds and the loaded oneDNN is the version it was written for;
otherwise callers keep ``ops.Conv2D``. float32, contiguous NCHW, groups 1, no dilation.
"""
import ctypes
import functools
import logging
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops, Tensor
from mindspore.ops.operations import _grad_ops  # Conv2DBackpropFilter: what Conv2D's own bprop uses

from . import cpu_kernels_enabled
from .build import build_library
from .linear import dnnl_link_args

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("conv.cc")


def _output_size(size, kernel, stride, pad_before, pad_after):
    return (size + pad_before + pad_after - kernel) // stride + 1


class DnnlConv2d(nn.Cell):
    """Convolution + bias (+ a residual) of one geometry: ``stride`` and ``padding`` (top,
    bottom, left, right). ``construct(x, weight, bias, residual, weight_grad)``; with
    ``weight_grad`` False the backward computes only the input's gradient (frozen layers)."""

    def __init__(self, lib, out_channels, kernel_size, stride, padding):
        super().__init__()
        top, bottom, left, right = padding
        self.cfg = Tensor(np.array([stride, top, bottom, left, right], np.float32))

        def out_shape(x, w, *_):
            return [x[0], w[0], _output_size(x[2], w[2], stride, top, bottom),
                    _output_size(x[3], w[3], stride, left, right)]

        def custom(name, shape, bprop):
            prim = ops.Custom(f"{lib}:{name}", out_shape=shape, out_dtype=lambda x, *_: x, func_type="aot",
                              bprop=bprop)
            # PyNative caches inferred shapes by primitive, attributes and input shapes: without
            # the geometry as an attribute, two strides on one input shape would share an output shape
            return prim.add_prim_attr("conv_geometry", (stride, top, bottom, left, right))

        input_grad = custom("conv_bwd_data", lambda dy, w, x, c: x, None)
        weight_grad = _grad_ops.Conv2DBackpropFilter(out_channels, kernel_size, pad_mode="pad", pad=tuple(padding),
                                                      pad_list=tuple(padding), stride=(stride, stride))

        def grads(x, w, b, cfg, dout, trainable):
            dx = input_grad(dout, w, x, cfg)
            if trainable:
                return dx, weight_grad(dout, x, w.shape), dout.sum(axis=(0, 2, 3))
            return dx, ops.zeros_like(w), ops.zeros_like(b)

        def plain(trainable):
            def bprop(x, w, b, cfg, out, dout):
                return grads(x, w, b, cfg, dout, trainable) + (ops.zeros_like(cfg),)
            return custom("conv_fwd", out_shape, bprop)

        def residual(trainable):
            def bprop(x, w, b, r, cfg, out, dout):
                return grads(x, w, b, cfg, dout, trainable) + (dout, ops.zeros_like(cfg))
            return custom("conv_residual_fwd", out_shape, bprop)

        self.conv, self.conv_frozen = plain(True), plain(False)
        self.conv_residual, self.conv_residual_frozen = residual(True), residual(False)

    def construct(self, x, weight, bias, residual=None, weight_grad=True):
        # The kernel reads every buffer as float32 (a float16 bias would be read as garbage), and
        # PyNative's infer cache does not re-check dtypes once a shape has been seen: check here.
        if weight.dtype != ms.float32 or bias.dtype != ms.float32 or x.dtype != ms.float32:
            raise TypeError(f"the oneDNN convolution takes float32 tensors only, got input {x.dtype}, "
                            f"weight {weight.dtype}, bias {bias.dtype}")
        x = x.contiguous()
        if residual is None:
            conv = self.conv if weight_grad else self.conv_frozen
            return conv(x, weight, bias, self.cfg)
        conv = self.conv_residual if weight_grad else self.conv_residual_frozen
        return conv(x, weight, bias, residual.contiguous(), self.cfg)


@functools.lru_cache(maxsize=None)
def _library():
    try:
        lib = build_library(_SOURCE, link=dnnl_link_args())
        status = ctypes.CDLL(lib).conv_runtime_check()
        if status != 0:
            raise RuntimeError(f"the oneDNN MindSpore loads is not the 2.x thread-pool build conv.cc expects "
                               f"(check {status})")
        return lib
    except Exception as err:  # noqa: BLE001 - no compiler or another oneDNN: MindSpore's Conv2D instead
        log.warning("oneDNN convolution kernel unavailable (%s); using MindSpore's Conv2D", err)
        return None


def cpu_conv(out_channels, kernel_size, stride, padding):
    """A :class:`DnnlConv2d` when the device target is CPU and the kernel is usable, else None."""
    if not cpu_kernels_enabled():
        return None
    lib = _library()
    return DnnlConv2d(lib, out_channels, kernel_size, stride, padding) if lib is not None else None

"""Basic cells whose parameter names match PyTorch's, so that a PyTorch
state dict maps onto the MindSpore model key for key.

MindSpore's own norm layers call their parameters ``gamma``/``beta`` and its
embedding ``embedding_table``; the cells here use ``weight``/``bias`` instead.
Normalisation is computed in float32 whatever the input dtype (as the original's
``GroupNorm32`` does) and cast back, which keeps fp16 inference stable.

Each layer picks its primitive by device target when it is built: on CPU the fused kernels of
:mod:`mvdream.kernels.norm_act` (one pass, MindSpore's own CPU norms are far slower), elsewhere
MindSpore's ops.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore import Tensor
from mindspore.common.initializer import Uniform, Normal, initializer

from ...kernels.conv import cpu_conv
from ...kernels.linear import PackedLinear, cpu_linear
from ...kernels.norm_act import cpu_kernels


# Fewest rows a CPU Linear multiplies (see Linear.min_rows).
MIN_ROWS = 64


def _uniform_fan_in(shape, fan_in):
    # PyTorch's default init for Linear/Conv weights and biases:
    # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return initializer(Uniform(bound), shape, ms.float32)


def _as(t, dtype):
    """``t`` in ``dtype``, without a cast kernel when it already is."""
    return t if t.dtype == dtype else t.astype(dtype)


class Affine(nn.Cell):
    """``x @ weight.T + bias`` over the last dimension of ``x``, for weights held elsewhere
    (:class:`Linear`, the text encoder's packed ``in_proj_weight``); no parameters of its own.

    ``few_rows``: the layer multiplies a few hundred rows at most (the text encoder's 77 tokens
    per prompt). On CPU in float32 it then runs oneDNN's sgemm (:mod:`mvdream.kernels.linear`),
    about twice MindSpore's MatMul rate there; at the UNet's thousands of rows MindSpore's
    MatMul is as fast and needs less memory, so the choice is the layer's, never the call's
    (a sample's output must not depend on its batch).

    :meth:`pack` gives a frozen few-rows layer a copy of its weight in oneDNN's packed layout
    (:class:`mvdream.kernels.linear.PackedLinear`), used from then on in place of the weight it
    is called with; same outputs, the weight's memory again."""

    def __init__(self, few_rows=False):
        super().__init__()
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        self.fused = cpu_linear() if few_rows else None
        self.packed = None
        # Both CPU GEMMs take another kernel for few rows (MindSpore's below ~32, oneDNN's below
        # 16), whose sums round differently: padding to MIN_ROWS keeps a sample's output the
        # same alone or in a batch (data-parallel ranks, half batches, reproduce one process).
        self.min_rows = MIN_ROWS if ms.get_context("device_target") == "CPU" else 0

    def pack(self, weight):
        """Pack ``weight``, the one every later call passes, when this layer runs the CPU kernel
        (None: stop using a packed copy). Call it again whenever ``weight`` changes."""
        # self.fused: the CPU kernel is enabled and built, which PackedLinear also needs
        usable = self.fused is not None and weight is not None and weight.dtype == ms.float32
        self.packed = PackedLinear(weight) if usable else None

    def construct(self, x, weight, bias=None):
        shape = x.shape
        out_features = weight.shape[0]
        # contiguous(): reshaping a non-contiguous view (transpose, chunk, broadcast)
        # corrupts the heap on MindSpore 2.7.1 CPU with MS_DEV_HOST_BLOCKING_RUN=1.
        x2 = x.contiguous().reshape(-1, shape[-1])
        rows = x2.shape[0]
        if rows < self.min_rows:
            x2 = ops.pad(x2, (0, 0, 0, self.min_rows - rows))
        if self.fused is not None and x.dtype == ms.float32 and weight.dtype == ms.float32:
            bias = ops.zeros((out_features,), ms.float32) if bias is None else _as(bias, ms.float32)
            y = self.fused(x2, weight, bias) if self.packed is None else self.packed(x2, bias)
        else:
            y = self.matmul(x2, _as(weight, x.dtype))
            if bias is not None:
                y = self.bias_add(y, _as(bias, x.dtype))  # fused into one pass over y
        if rows < self.min_rows:
            y = y[:rows].contiguous()
        return y.reshape(shape[:-1] + (out_features,))


class Linear(nn.Cell):
    """``torch.nn.Linear``: ``weight`` is (out, in), ``bias`` is (out,). ``few_rows``: see
    :class:`Affine`."""

    def __init__(self, in_features, out_features, bias=True, few_rows=False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(_uniform_fan_in((out_features, in_features), in_features), name="weight")
        self.bias = Parameter(_uniform_fan_in((out_features,), in_features), name="bias") if bias else None
        self.affine = Affine(few_rows)

    def pack_weight(self, enabled=True):
        """See :func:`pack_weights`."""
        self.affine.pack(self.weight if enabled else None)

    def construct(self, x):
        return self.affine(x, self.weight, self.bias)


def pack_weights(cell, enabled=True):
    """Give every few-rows layer under ``cell`` (a cell with a ``pack_weight(enabled)`` method) a
    packed copy of its current weight (:meth:`Affine.pack`), or with ``enabled`` False drop it;
    for frozen inference only, and again after the weights change."""
    for _, sub in cell.cells_and_names():
        if callable(getattr(sub, "pack_weight", None)):
            sub.pack_weight(enabled)


class _FrozenConv(nn.Cell):
    """Convolution + bias (+ a residual) whose backward computes the input's gradient only.

    PyNative autodiff runs Conv2D's whole backward, the weight's gradient too, even when
    nothing asks for it (measured: as costly as the input's gradient); PyTorch skips it. The
    frozen VAE encoder is differentiated in every x0-SDS step, so its convolutions come here.
    The residual add is inside because a custom backward keeps its output alive: the sum is
    the next block's input, kept anyway, where the bare convolution's output would be extra
    memory."""

    def __init__(self, conv, input_grad):
        super().__init__()
        self.conv = conv
        self.input_grad = input_grad
        self.bias_add = ops.BiasAdd()

    def construct(self, x, weight, bias):
        return self.bias_add(self.conv(x, weight), bias)

    def bprop(self, x, weight, bias, out, dout):
        return self.input_grad(dout, weight, x.shape), ops.zeros_like(weight), ops.zeros_like(bias)


class _FrozenConvResidual(_FrozenConv):
    def construct(self, x, weight, bias, residual):
        return self.bias_add(self.conv(x, weight), bias) + residual

    def bprop(self, x, weight, bias, residual, out, dout):
        return self.input_grad(dout, weight, x.shape), ops.zeros_like(weight), ops.zeros_like(bias), dout


class Conv2d(nn.Cell):
    """``torch.nn.Conv2d`` (NCHW, zero padding, groups=1). ``padding`` is an int or, as
    MindSpore's Conv2D takes it, (top, bottom, left, right).

    ``construct(x, residual)`` returns ``conv(x) + residual``, the skip connection's add.
    After :func:`freeze` the backward computes only the input's gradient (:class:`_FrozenConv`).
    On CPU, float32 convolutions with a bias run oneDNN's direct convolution
    (:mod:`mvdream.kernels.conv`), which does the same."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        fan_in = in_channels * k[0] * k[1]
        self.weight = Parameter(_uniform_fan_in((out_channels, in_channels, k[0], k[1]), fan_in), name="weight")
        self.bias = Parameter(_uniform_fan_in((out_channels,), fan_in), name="bias") if bias else None
        geometry = dict(out_channel=out_channels, kernel_size=tuple(k), mode=1,
                        pad_mode="pad" if padding else "valid", pad=padding, stride=stride)
        self.conv = ops.Conv2D(**geometry)
        self.bias_add = ops.BiasAdd()
        self.weight_grad = True  # False after freeze(): a plain bool, which graph mode can read
        pad4 = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,) * 4
        self.dnnl = cpu_conv(out_channels, tuple(k), stride, pad4) if bias and isinstance(stride, int) else None
        if bias:
            input_grad = ops.Conv2DBackpropInput(**geometry)
            self.frozen = _FrozenConv(self.conv, input_grad)
            self.frozen_residual = _FrozenConvResidual(self.conv, input_grad)

    def construct(self, x, residual=None):
        weight = _as(self.weight, x.dtype)
        bias = None if self.bias is None else _as(self.bias, x.dtype)
        if self.dnnl is not None and x.dtype == ms.float32:
            return self.dnnl(x, weight, bias, residual, self.weight_grad)
        if bias is not None and not self.weight_grad:
            if residual is None:
                return self.frozen(x, weight, bias)
            return self.frozen_residual(x, weight, bias, residual)
        y = self.conv(x, weight)
        if bias is not None:
            y = self.bias_add(y, bias)
        return y if residual is None else y + residual


def freeze(cell):
    """Freeze ``cell`` for good: no parameter requires grad, and the backward of its
    convolutions computes only the input's gradient."""
    for param in cell.get_parameters():
        param.requires_grad = False
    for _, sub in cell.cells_and_names():
        if isinstance(sub, Conv2d):
            sub.weight_grad = False
    return cell


class GroupNorm(nn.Cell):
    """``torch.nn.GroupNorm`` computed in float32; ``construct(x, silu=True)`` also applies
    SiLU (fused into the same pass on CPU), as the ResBlocks' norm -> SiLU pairs do."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        # Without affine the parameters stay out of the cell (as in torch) but the
        # kernels take them: constant ones/zeros.
        weight = initializer("ones", (num_channels,), ms.float32)
        bias = initializer("zeros", (num_channels,), ms.float32)
        if affine:
            self.weight = Parameter(weight, name="weight")
            self.bias = Parameter(bias, name="bias")
        else:
            self.weight = Tensor(np.ones(num_channels, np.float32))
            self.bias = Tensor(np.zeros(num_channels, np.float32))
        kernels = cpu_kernels()
        self.fused = kernels.group_norm if kernels is not None else None
        self.cfg = (Tensor(np.array([num_groups, eps, 0.0], np.float32)),
                    Tensor(np.array([num_groups, eps, 1.0], np.float32)))

    def construct(self, x, silu=False):
        dtype = x.dtype
        h = _as(x, ms.float32).contiguous()
        weight, bias = _as(self.weight, ms.float32), _as(self.bias, ms.float32)
        if self.fused is not None:
            h = self.fused(h, weight, bias, self.cfg[1] if silu else self.cfg[0])
        else:
            h = ops.group_norm(h, self.num_groups, weight, bias, self.eps)
            if silu:
                h = ops.silu(h)
        return _as(h, dtype)


class LayerNorm(nn.Cell):
    """``torch.nn.LayerNorm`` over the last dimension, computed in float32."""

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer("ones", (normalized_shape,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (normalized_shape,), ms.float32), name="bias")
        kernels = cpu_kernels()
        self.fused = kernels.layer_norm if kernels is not None else None
        self.cfg = Tensor(np.array([eps], np.float32))
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        dtype = x.dtype
        h = _as(x, ms.float32).contiguous()
        weight, bias = _as(self.weight, ms.float32), _as(self.bias, ms.float32)
        if self.fused is not None:
            h = self.fused(h, weight, bias, self.cfg)
        else:
            h = self.layer_norm(h, weight, bias)[0]
        return _as(h, dtype)


class GELU(nn.Cell):
    """``torch.nn.GELU()``: the exact (erf) GELU."""

    def __init__(self):
        super().__init__()
        kernels = cpu_kernels()
        self.fused = kernels.gelu if kernels is not None else None

    def construct(self, x):
        if self.fused is not None:
            return _as(self.fused(_as(x, ms.float32).contiguous()), x.dtype)
        return ops.gelu(x, approximate="none")


class Embedding(nn.Cell):
    """``torch.nn.Embedding``: a ``weight`` table indexed by integer ids."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.weight = Parameter(initializer(Normal(1.0), (num_embeddings, embedding_dim), ms.float32), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class Identity(nn.Cell):
    def construct(self, x):
        return x


def upsample_nearest2x(x):
    """Nearest-neighbour x2 upsampling of NCHW as broadcast + reshape: exact, needs no resize kernel."""
    n, c, h, w = x.shape
    x = ops.broadcast_to(x.reshape(n, c, h, 1, w, 1), (n, c, h, 2, w, 2))
    # contiguous(): reshaping a broadcast view corrupts the heap on MindSpore 2.7.1 CPU.
    return x.contiguous().reshape(n, c, 2 * h, 2 * w)


def zero_module(cell):
    """Zero every parameter of ``cell`` (the original's ``zero_module``) and return it."""
    for param in cell.get_parameters():
        # An initializer (not a numpy array) so that under
        # ``mindspore.nn.utils.no_init_parameters`` nothing is allocated.
        param.set_data(initializer("zeros", param.shape, param.dtype))
    return cell

"""Basic cells whose parameter names match PyTorch's, so that a PyTorch
state dict maps onto the MindSpore model key for key.

MindSpore's own norm layers call their parameters ``gamma``/``beta`` and its
embedding ``embedding_table``; the cells here use ``weight``/``bias`` instead.
Normalisation is computed in float32 whatever the input dtype (as the original's
``GroupNorm32`` does) and cast back, which keeps fp16 inference stable.
"""
import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Uniform, Normal, initializer


def _uniform_fan_in(shape, fan_in):
    # PyTorch's default init for Linear/Conv weights and biases:
    # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return initializer(Uniform(bound), shape, ms.float32)


class Linear(nn.Cell):
    """``torch.nn.Linear``: ``weight`` is (out, in), ``bias`` is (out,)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(_uniform_fan_in((out_features, in_features), in_features), name="weight")
        self.bias = Parameter(_uniform_fan_in((out_features,), in_features), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        # contiguous(): reshaping a non-contiguous view (transpose, chunk, broadcast)
        # corrupts the heap on MindSpore 2.7.1 CPU with MS_DEV_HOST_BLOCKING_RUN=1.
        y = self.matmul(x.contiguous().reshape(-1, shape[-1]), self.weight.astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias.astype(x.dtype)
        return y.reshape(shape[:-1] + (self.out_features,))


class Conv2d(nn.Cell):
    """``torch.nn.Conv2d`` (NCHW, symmetric zero padding, groups=1)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        fan_in = in_channels * k[0] * k[1]
        self.weight = Parameter(_uniform_fan_in((out_channels, in_channels, k[0], k[1]), fan_in), name="weight")
        self.bias = Parameter(_uniform_fan_in((out_channels,), fan_in), name="bias") if bias else None
        self.conv = ops.Conv2D(out_channel=out_channels, kernel_size=tuple(k), mode=1,
                               pad_mode="pad" if padding else "valid", pad=padding, stride=stride)
        self.bias_add = ops.BiasAdd()

    def construct(self, x):
        y = self.conv(x, self.weight.astype(x.dtype))
        if self.bias is not None:
            y = self.bias_add(y, self.bias.astype(x.dtype))
        return y


class GroupNorm(nn.Cell):
    """``torch.nn.GroupNorm`` computed in float32."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = Parameter(initializer("ones", (num_channels,), ms.float32), name="weight")
            self.bias = Parameter(initializer("zeros", (num_channels,), ms.float32), name="bias")

    def construct(self, x):
        dtype = x.dtype
        shape = x.shape
        h = x.astype(ms.float32).contiguous().reshape(shape[0], self.num_groups, -1)  # see Linear
        mean = h.mean(axis=-1, keep_dims=True)
        var = ((h - mean) ** 2).mean(axis=-1, keep_dims=True)
        h = ((h - mean) / ops.sqrt(var + self.eps)).reshape(shape)
        if self.affine:
            param_shape = (1, self.num_channels) + (1,) * (len(shape) - 2)
            h = h * self.weight.reshape(param_shape) + self.bias.reshape(param_shape)
        return h.astype(dtype)


class LayerNorm(nn.Cell):
    """``torch.nn.LayerNorm`` over the last dimension, computed in float32."""

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer("ones", (normalized_shape,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (normalized_shape,), ms.float32), name="bias")

    def construct(self, x):
        dtype = x.dtype
        h = x.astype(ms.float32)
        mean = h.mean(axis=-1, keep_dims=True)
        var = ((h - mean) ** 2).mean(axis=-1, keep_dims=True)
        h = (h - mean) / ops.sqrt(var + self.eps)
        return (h * self.weight + self.bias).astype(dtype)


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

"""The PyTorch-named basic cells compute what their PyTorch namesakes compute."""
import numpy as np
from mindspore import Tensor

from mvdream.ldm.modules.torch_layers import Conv2d, GroupNorm, LayerNorm, Linear


def _conv_ref(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out + b[None, :, None, None]


def test_conv2d_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)
    conv = Conv2d(4, 6, 3, stride=2, padding=1)
    ref = _conv_ref(x, conv.weight.asnumpy(), conv.bias.asnumpy(), 2, 1)
    assert np.abs(conv(Tensor(x)).asnumpy() - ref).max() < 1e-5
    assert [n for n, _ in conv.parameters_and_names()] == ["weight", "bias"]


def test_norms_and_linear_match_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 5, 3)).astype(np.float32)
    gn = GroupNorm(4, 8, eps=1e-6)
    g = x.reshape(2, 4, -1)
    ref = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)).reshape(x.shape)
    assert np.abs(gn(Tensor(x)).asnumpy() - ref).max() < 1e-5

    ln = LayerNorm(3)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    assert np.abs(ln(Tensor(x)).asnumpy() - ref).max() < 1e-5

    lin = Linear(3, 4)
    ref = x @ lin.weight.asnumpy().T + lin.bias.asnumpy()
    assert np.abs(lin(Tensor(x)).asnumpy() - ref).max() < 1e-5

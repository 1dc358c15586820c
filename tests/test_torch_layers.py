"""The PyTorch-named basic cells compute what their PyTorch namesakes compute."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from mvdream.ldm.modules.torch_layers import Conv2d, GroupNorm, LayerNorm, Linear, freeze


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


def _input_grads(conv, x, residual, weights):
    """Gradients of ``sum(conv(x, residual) * weights)`` w.r.t. x and, when ``residual`` is
    not None, w.r.t. the residual too."""
    def loss(x, residual):
        return (conv(x, residual=residual) * weights).sum()
    if residual is None:
        return (ms.grad(lambda x: loss(x, None))(x).asnumpy(),)
    return tuple(g.asnumpy() for g in ms.grad(loss, grad_position=(0, 1))(x, residual))


@pytest.mark.parametrize("kernel, stride, padding, with_residual", [
    (3, 1, 1, True), (3, 2, (0, 1, 0, 1), False), (1, 1, 0, True), (3, 1, 1, False)])
def test_frozen_conv_backward_is_the_input_gradient(kernel, stride, padding, with_residual):
    """After freeze() the backward computes only the input's gradient, with the same kernel as
    MindSpore's own Conv2D backward: bitwise the gradients of the unfrozen convolution."""
    rng = np.random.default_rng(2)
    conv = Conv2d(4, 4, kernel, stride=stride, padding=padding)
    x = Tensor(rng.standard_normal((2, 4, 9, 9)).astype(np.float32))
    out_shape = conv(x).shape
    residual = Tensor(rng.standard_normal(out_shape).astype(np.float32)) if with_residual else None
    weights = Tensor(rng.standard_normal(out_shape).astype(np.float32))
    expected_out = conv(x, residual=residual).asnumpy()
    expected = _input_grads(conv, x, residual, weights)

    freeze(conv)
    assert not conv.weight_grad and conv.trainable_params() == []
    np.testing.assert_array_equal(conv(x, residual=residual).asnumpy(), expected_out)
    for got, want in zip(_input_grads(conv, x, residual, weights), expected):
        np.testing.assert_array_equal(got, want)
    # the frozen backward hands the weights zeros, not their gradient
    weight_grad = ms.grad(lambda x: (conv(x, residual=residual) * weights).sum(), None, [conv.weight])(x)
    assert not weight_grad[0].asnumpy().any()
    if with_residual:  # the residual's gradient is the output's
        np.testing.assert_array_equal(expected[1], weights.asnumpy())


def test_conv2d_asymmetric_padding_is_pad_then_conv():
    """padding=(top, bottom, left, right) = (0, 1, 0, 1) is the original Downsample's
    F.pad(x, (0, 1, 0, 1)) followed by a valid convolution, forward and backward."""
    rng = np.random.default_rng(3)
    padded = Conv2d(3, 5, 3, stride=2, padding=(0, 1, 0, 1))
    valid = Conv2d(3, 5, 3, stride=2, padding=0)
    valid.weight.set_data(padded.weight.value().copy())
    valid.bias.set_data(padded.bias.value().copy())
    x = Tensor(rng.standard_normal((2, 3, 8, 10)).astype(np.float32))
    np.testing.assert_array_equal(padded(x).asnumpy(), valid(ops.pad(x, (0, 1, 0, 1))).asnumpy())
    grad_padded = ms.grad(lambda x: (padded(x) ** 2).sum())(x).asnumpy()
    grad_valid = ms.grad(lambda x: (valid(ops.pad(x, (0, 1, 0, 1))) ** 2).sum())(x).asnumpy()
    np.testing.assert_allclose(grad_padded, grad_valid, rtol=1e-6, atol=1e-6)

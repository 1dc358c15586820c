"""The fused CPU kernels (mvdream.kernels.norm_act) and the layers that use them compute
GroupNorm(+SiLU), LayerNorm, erf-GELU and GEGLU and their gradients as float64 NumPy does;
MindSpore's own ops (the path of other device targets) give the same numbers. The same holds
for the few-rows Linear's oneDNN GEMM (mvdream.kernels.linear) and for the oneDNN direct
convolution behind Conv2d (mvdream.kernels.conv)."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mvdream.kernels.attention import cpu_attention
from mvdream.kernels.conv import cpu_conv
from mvdream.kernels.linear import PackedLinear, cpu_linear
from mvdream.kernels.norm_act import cpu_kernels
from mvdream.ldm.modules.attention import GEGLU, CrossAttention, attention
from mvdream.ldm.modules.encoders.open_clip_text import TextTransformer
from mvdream.ldm.modules.torch_layers import GELU, Affine, Conv2d, GroupNorm, LayerNorm, Linear, freeze

_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _group_norm(x, w, b, groups, eps, silu):
    h = x.reshape(x.shape[0], groups, -1)
    h = ((h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps)).reshape(x.shape)
    y = h * w[None, :, None, None] + b[None, :, None, None]
    return y / (1.0 + np.exp(-y)) if silu else y


def _layer_norm(x, w, b, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def _geglu(h):
    a, g = np.split(h, 2, axis=-1)
    return a * _gelu(g)


def _numeric_grad(f, arrays, weight):
    """d sum(f(*arrays) * weight) / d arrays, central differences in float64."""
    grads = []
    for i, a in enumerate(arrays):
        grad = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            args = [x.copy() for x in arrays]
            args[i][idx] += 1e-6
            up = (f(*args) * weight).sum()
            args[i][idx] -= 2e-6
            grad[idx] = (up - (f(*args) * weight).sum()) / 2e-6
        grads.append(grad)
    return grads


def _check(cell, ref, inputs, params=(), atol=2e-6):
    """Forward and gradients (inputs and parameters) of ``cell`` against ``ref`` in float64."""
    x64 = [a.astype(np.float64) for a in inputs]
    p64 = [p.asnumpy().astype(np.float64) for p in params]
    want = ref(*x64, *p64)
    got = cell(*[Tensor(a) for a in inputs])
    np.testing.assert_allclose(got.asnumpy(), want, rtol=0, atol=atol * max(1.0, np.abs(want).max()))
    weight = np.random.default_rng(7).standard_normal(want.shape)
    grad_fn = ms.grad(lambda *xs: (cell(*xs) * Tensor(weight.astype(np.float32))).sum(),
                      grad_position=tuple(range(len(inputs))), weights=list(params) or None)
    grads = grad_fn(*[Tensor(a) for a in inputs])
    if params:
        grads = list(grads[0] if isinstance(grads[0], tuple) else (grads[0],)) + list(grads[1])
    elif not isinstance(grads, tuple):
        grads = (grads,)
    for got_g, want_g in zip(grads, _numeric_grad(ref, x64 + p64, weight)):
        np.testing.assert_allclose(got_g.asnumpy(), want_g, rtol=0, atol=1e-5 * max(1.0, np.abs(want_g).max()))


def _random_affine(cell, rng):
    cell.weight.set_data(Tensor(rng.standard_normal(cell.weight.shape).astype(np.float32)))
    cell.bias.set_data(Tensor(rng.standard_normal(cell.bias.shape).astype(np.float32)))
    return cell


def test_layers_use_the_fused_kernels_on_cpu():
    assert ms.get_context("device_target") == "CPU" and cpu_kernels() is not None
    assert all(cell.fused is not None for cell in (GroupNorm(2, 4), LayerNorm(4), GELU(), GEGLU(4, 4),
                                                     CrossAttention(8, heads=2, dim_head=4)))
    # The text encoder's GEMMs are few-rows ones (oneDNN); a default Linear (the UNet's) is not.
    text = TextTransformer(8, context_length=5, vocab_size=11, width=8, heads=2, layers=1)
    affines = [cell for _, cell in text.cells_and_names() if isinstance(cell, Affine)]
    assert len(affines) == 4 and all(cell.fused is not None for cell in affines)
    assert Linear(4, 4).affine.fused is None


@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_kernel_and_gradients(silu):
    rng = np.random.default_rng(0)
    gn = _random_affine(GroupNorm(4, 8, eps=1e-6), rng)
    x = (3.0 * rng.standard_normal((2, 8, 3, 2)) + 1.0).astype(np.float32)
    _check(lambda t: gn(t, silu=silu), lambda t, w, b: _group_norm(t, w, b, 4, 1e-6, silu), [x],
           (gn.weight, gn.bias))


def test_layer_norm_kernel_and_gradients():
    rng = np.random.default_rng(1)
    ln = _random_affine(LayerNorm(6), rng)
    x = (2.0 * rng.standard_normal((2, 3, 6)) - 0.5).astype(np.float32)
    _check(ln, lambda t, w, b: _layer_norm(t, w, b, 1e-5), [x], (ln.weight, ln.bias))


def test_gelu_and_geglu_kernels_and_gradients():
    rng = np.random.default_rng(2)
    kernels = cpu_kernels()
    x = np.concatenate([np.linspace(-9, 9, 37), 3 * rng.standard_normal(11)]).astype(np.float32).reshape(4, 12)
    _check(GELU(), _gelu, [x])
    _check(kernels.geglu, _geglu, [x])


def test_gelu_kernel_is_as_accurate_as_libm_erf():
    """The kernels' erf is a vectorised polynomial; over a dense sweep GELU stays within the
    error that libm's erff gives (measured: at most 1.61 ulp for x >= 0 with either, mean 0.24).
    Abramowitz-Stegun's erf (1.5e-7 off) fails it: 3.5 ulp at most, mean 0.41."""
    x = np.linspace(-8, 8, 400_001).astype(np.float32)
    got = GELU()(Tensor(x)).asnumpy().astype(np.float64)
    x64 = x.astype(np.float64)
    want = _gelu(x64)
    err = np.abs(got - want)
    ulps = err / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    positive = x >= 0
    assert ulps[positive].max() <= 2.0
    assert ulps[positive].mean() <= 0.3
    assert (err / np.maximum(1.0, np.abs(x64))).max() <= 1.5e-7  # negative x: 1 + erf cancels


def _attention64(q, k, v, heads, scale):
    """Multi-head softmax(scale q k^T) v in float64, (B, N, H*D) layout."""
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
    logits = scale * split(q) @ split(k).transpose(0, 1, 3, 2)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    out = (probs / probs.sum(-1, keepdims=True)) @ split(v)
    return out.transpose(0, 2, 1, 3).reshape(q.shape)


@pytest.mark.parametrize("nq, nk, heads, dim_head", [(70, 9, 2, 4), (5, 133, 1, 8)])
def test_attention_kernel_and_gradients(nq, nk, heads, dim_head):
    # 70 queries: a 64-row block and a 6-row one; 133 keys: no multiple of the 8 softmax lanes.
    rng = np.random.default_rng(4)
    fused = cpu_attention(heads, dim_head ** -0.5)
    q = rng.standard_normal((2, nq, heads * dim_head)).astype(np.float32)
    k, v = (rng.standard_normal((2, nk, heads * dim_head)).astype(np.float32) for _ in range(2))
    _check(fused, lambda a, b, c: _attention64(a, b, c, heads, dim_head ** -0.5), [q, k, v])
    # the ops path (other device targets) gives the same numbers
    want = attention(Tensor(q), Tensor(k), Tensor(v), heads, dim_head ** -0.5).asnumpy()
    np.testing.assert_allclose(fused(Tensor(q), Tensor(k), Tensor(v)).asnumpy(), want, rtol=0, atol=2e-6)


def test_attention_sample_is_bitwise_the_same_alone_and_in_a_batch():
    rng = np.random.default_rng(6)
    fused = cpu_attention(3, 0.125)
    k, v = (Tensor(rng.standard_normal((3, 21, 24)).astype(np.float32)) for _ in range(2))
    q = rng.standard_normal((3, 67, 24)).astype(np.float32)
    batch = fused(Tensor(q), k, v).asnumpy()
    for i in range(3):
        alone = fused(Tensor(q[i:i + 1]), k[i:i + 1], v[i:i + 1]).asnumpy()
        np.testing.assert_array_equal(batch[i], alone[0], err_msg=f"sample {i}")


def test_mindspore_ops_path_matches_the_kernels(monkeypatch):
    rng = np.random.default_rng(3)
    x4 = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    x3 = rng.standard_normal((2, 5, 8)).astype(np.float32)
    fused = [GroupNorm(4, 8), LayerNorm(8), GELU()]
    monkeypatch.setenv("MVDREAM_CPU_KERNELS", "0")
    plain = [GroupNorm(4, 8), LayerNorm(8), GELU()]
    assert all(cell.fused is None for cell in plain)
    for a, b in zip(fused[:2], plain[:2]):
        for cell in (a, b):
            _random_affine(cell, np.random.default_rng(4))
    pairs = [(lambda c: c(Tensor(x4), silu=True), fused[0], plain[0]),
             (lambda c: c(Tensor(x3)), fused[1], plain[1]),
             (lambda c: c(Tensor(x3)), fused[2], plain[2])]
    for run, a, b in pairs:
        np.testing.assert_allclose(run(a).asnumpy(), run(b).asnumpy(), rtol=0, atol=2e-6)


def test_kernels_run_under_jit():
    gn, gelu = GroupNorm(2, 4), GELU()

    def run(t):
        return gelu(gn(t, silu=True))

    x = Tensor(np.linspace(-4, 4, 96, dtype=np.float32).reshape(2, 4, 3, 4))
    np.testing.assert_array_equal(ms.jit(run)(x).asnumpy(), run(x).asnumpy())


def _forward_and_input_grad(fn, x, w):
    grad = ms.grad(lambda t: (fn(t) * Tensor(w)).sum(), grad_position=0)(Tensor(x))
    return fn(Tensor(x)).asnumpy(), grad.asnumpy()


def _assert_samples_alone_equal_batch(fn, x, rng, name):
    """Each of the 3 samples of ``x``: forward and input gradient alone == in the batch, bitwise."""
    w = rng.standard_normal(fn(Tensor(x)).shape).astype(np.float32)
    y_all, g_all = _forward_and_input_grad(fn, x, w)
    for i in range(3):
        y_one, g_one = _forward_and_input_grad(fn, x[i:i + 1], w[i:i + 1])
        np.testing.assert_array_equal(y_all[i], y_one[0], err_msg=f"{name} forward, sample {i}")
        np.testing.assert_array_equal(g_all[i], g_one[0], err_msg=f"{name} input gradient, sample {i}")


@pytest.mark.parametrize("op", ["group_norm", "group_norm_silu", "layer_norm", "gelu", "geglu"])
def test_a_sample_computes_bitwise_the_same_alone_and_at_an_odd_offset_in_a_batch(op):
    # Per-sample sizes (315, 185, 370 floats) are no multiple of 8, so samples 1 and 2 start at
    # addresses no vector-aligned buffer has: a reduction that follows the alignment (omp simd)
    # rounds them differently, and data-parallel ranks (half batches) stop matching one process.
    kernels = cpu_kernels()
    rng = np.random.default_rng(5)
    if op.startswith("group_norm"):
        shape, cfg = (3, 9, 5, 7), Tensor(np.array([3, 1e-5, float(op.endswith("silu"))], np.float32))
        gamma, beta = (Tensor(rng.standard_normal(9).astype(np.float32)) for _ in range(2))
        fn = lambda t: kernels.group_norm(t, gamma, beta, cfg)  # noqa: E731
    elif op == "layer_norm":
        shape, cfg = (3, 5, 37), Tensor(np.array([1e-5], np.float32))
        gamma, beta = (Tensor(rng.standard_normal(37).astype(np.float32)) for _ in range(2))
        fn = lambda t: kernels.layer_norm(t, gamma, beta, cfg)  # noqa: E731
    else:
        shape, fn = (3, 5, 74) if op == "geglu" else (3, 5, 37), getattr(kernels, op)
    _assert_samples_alone_equal_batch(fn, (3.0 * rng.standard_normal(shape) + 0.5).astype(np.float32), rng, op)


@pytest.mark.parametrize("few_rows", [False, True])
def test_linear_rows_are_bitwise_the_same_in_any_batch(few_rows):
    # Both CPU GEMMs take another kernel for few rows (MindSpore's MatMul below ~32, as a UNet's
    # time/camera embeddings at batch 8 vs 16; oneDNN's sgemm below 16): Linear pads to
    # MIN_ROWS on CPU. Above that oneDNN's rows do not depend on the batch (checked to 2000).
    rng = np.random.default_rng(6)
    lin = Linear(320, 1280, few_rows=few_rows)
    assert (lin.affine.fused is not None) == few_rows
    x = rng.standard_normal((200, 320)).astype(np.float32)
    full = lin(Tensor(x)).asnumpy()
    for part in (slice(8, 16), slice(3, 4), slice(0, 2), slice(0, 77), slice(77, 200), slice(5, 105)):
        np.testing.assert_array_equal(lin(Tensor(x[part])).asnumpy(), full[part])

    def run(t):
        return lin(t)

    np.testing.assert_array_equal(ms.jit(run)(Tensor(x[:2])).asnumpy(), full[:2])
    np.testing.assert_allclose(full, x.astype(np.float64) @ lin.weight.asnumpy().T + lin.bias.asnumpy(),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_linear_kernel_and_gradients(bias):
    assert cpu_linear() is not None
    rng = np.random.default_rng(8)
    lin = Linear(7, 5, bias=bias, few_rows=True)
    lin.weight.set_data(Tensor(rng.standard_normal((5, 7)).astype(np.float32)))
    params = (lin.weight,)
    if bias:
        lin.bias.set_data(Tensor(rng.standard_normal(5).astype(np.float32)))
        params += (lin.bias,)
    x = rng.standard_normal((2, 3, 7)).astype(np.float32)
    _check(lin, (lambda t, w, b: t @ w.T + b) if bias else (lambda t, w: t @ w.T), [x], params)


def test_few_rows_linear_matches_matmul_at_text_encoder_shapes():
    # Both paths against float64 at the text encoder's size (2 prompts x 77 tokens, 1024 -> 4096):
    # sums of 1024 products, so the tolerance is sqrt(K) ulps of the output scale.
    rng = np.random.default_rng(9)
    fused, plain = Linear(1024, 4096, few_rows=True), Linear(1024, 4096)
    plain.weight.set_data(fused.weight.value())
    plain.bias.set_data(fused.bias.value())
    x = rng.standard_normal((2, 77, 1024)).astype(np.float32)
    want = x.astype(np.float64) @ fused.weight.asnumpy().T.astype(np.float64) + fused.bias.asnumpy()
    for cell in (fused, plain):
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), want, rtol=0, atol=4e-6 * np.abs(want).max())


def test_packed_linear_computes_the_unpacked_kernels_product():
    # A frozen layer's weight packed once for oneDNN (the text encoder) must give the unpacked
    # kernel's product (the same bits on the Xeon and oneDNN build measured; another CPU may take
    # another oneDNN kernel for the packed path, hence a 1e-6 tolerance): at any rows (padded to
    # MIN_ROWS), 200 outputs (not a whole number of the 64-column thread blocks), under jit; and
    # it is a copy, so it follows the weight only when packed again.
    rng = np.random.default_rng(10)
    lin = Linear(96, 200, few_rows=True)
    weight = rng.standard_normal((200, 96)).astype(np.float32)
    lin.weight.set_data(Tensor(weight))
    lin.bias.set_data(Tensor(rng.standard_normal(200).astype(np.float32)))
    x = rng.standard_normal((154, 96)).astype(np.float32)
    want = {rows: lin(Tensor(x[:rows])).asnumpy() for rows in (1, 16, 77, 154)}
    lin.pack_weight()
    assert isinstance(lin.affine.packed, PackedLinear)
    def assert_same_product(got, expected):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())

    for rows, expected in want.items():
        assert_same_product(lin(Tensor(x[:rows])).asnumpy(), expected)

    def run(t):
        return lin(t)

    assert_same_product(ms.jit(run)(Tensor(x)).asnumpy(), want[154])

    lin.weight.set_data(Tensor(2 * weight))
    assert_same_product(lin(Tensor(x)).asnumpy(), want[154])  # the old packed copy
    lin.pack_weight()
    expected = x.astype(np.float64) @ (2 * weight.astype(np.float64)).T + lin.bias.asnumpy()
    np.testing.assert_allclose(lin(Tensor(x)).asnumpy(), expected, rtol=0, atol=4e-6 * np.abs(expected).max())
    lin.pack_weight(False)
    assert lin.affine.packed is None


def test_few_rows_linear_falls_back_to_matmul(monkeypatch):
    monkeypatch.setenv("MVDREAM_CPU_KERNELS", "0")
    assert cpu_linear() is None and Linear(4, 4, few_rows=True).affine.fused is None


def _conv(x, w, b, stride, pad, residual=None):
    """float64 NumPy convolution, ``pad`` = (top, bottom, left, right)."""
    x = np.pad(x, ((0, 0), (0, 0), pad[:2], pad[2:]))
    kh, kw = w.shape[2:]
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    out += b[None, :, None, None]
    return out if residual is None else out + residual


# The VAE's and the UNet's geometries: 3x3 (stride 1, and stride 2 with the Downsample's
# (0, 1, 0, 1) padding), 1x1, and an RGB input; channel counts that are no multiple of 8 or 16.
_CONV_CASES = [(5, 20, 3, 1, (1, 1, 1, 1)), (6, 9, 3, 2, (0, 1, 0, 1)), (3, 17, 3, 1, (1, 1, 1, 1)),
               (20, 12, 1, 1, (0, 0, 0, 0))]


@pytest.mark.parametrize("cin, cout, kernel, stride, padding", _CONV_CASES)
@pytest.mark.parametrize("residual", [False, True])
def test_conv_kernel_and_gradients(cin, cout, kernel, stride, padding, residual):
    rng = np.random.default_rng(10)
    conv = Conv2d(cin, cout, kernel, stride=stride, padding=padding)
    assert conv.dnnl is not None
    x = rng.standard_normal((2, cin, 7, 9)).astype(np.float32)
    inputs = [x]
    if residual:
        inputs.append(rng.standard_normal(conv(Tensor(x)).shape).astype(np.float32))
    _check(lambda *t: conv(*t), lambda t, *rest: _conv(t, rest[-2], rest[-1], stride, padding,
                                                       rest[0] if residual else None),
           inputs, (conv.weight, conv.bias))


def test_frozen_conv_kernel_computes_the_input_gradient_only():
    rng = np.random.default_rng(11)
    conv = freeze(Conv2d(6, 5, 3, stride=1, padding=1))
    x = rng.standard_normal((2, 6, 5, 8)).astype(np.float32)
    w = rng.standard_normal((2, 5, 5, 8))
    w64, b64 = conv.weight.asnumpy().astype(np.float64), conv.bias.asnumpy().astype(np.float64)
    (want,) = _numeric_grad(lambda t: _conv(t, w64, b64, 1, (1, 1, 1, 1)), [x.astype(np.float64)], w)
    loss = lambda t: (conv(t) * Tensor(w.astype(np.float32))).sum()  # noqa: E731
    got = ms.grad(loss)(Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    weight_grad = ms.grad(loss, None, [conv.weight, conv.bias])(Tensor(x))
    assert not any(g.asnumpy().any() for g in weight_grad)


@pytest.mark.parametrize("cin, cout, kernel, stride, padding", _CONV_CASES)
def test_conv_sample_is_bitwise_the_same_alone_and_in_a_batch(cin, cout, kernel, stride, padding):
    # Data-parallel ranks see half batches: a sample's output and input gradient must not
    # depend on the batch it came in (nor on its offset in it).
    rng = np.random.default_rng(12)
    conv = freeze(Conv2d(cin, cout, kernel, stride=stride, padding=padding))
    _assert_samples_alone_equal_batch(conv, rng.standard_normal((3, cin, 10, 12)).astype(np.float32), rng, "conv")


def test_conv_kernel_matches_mindspore_conv2d_and_runs_under_jit(monkeypatch):
    rng = np.random.default_rng(13)
    fused = Conv2d(16, 32, 3, stride=1, padding=1)
    monkeypatch.setenv("MVDREAM_CPU_KERNELS", "0")
    assert cpu_conv(32, (3, 3), 1, (1, 1, 1, 1)) is None
    plain = Conv2d(16, 32, 3, stride=1, padding=1)
    assert plain.dnnl is None
    plain.weight.set_data(fused.weight.value())
    plain.bias.set_data(fused.bias.value())
    x = Tensor(rng.standard_normal((2, 16, 12, 12)).astype(np.float32))
    want = plain(x).asnumpy()
    # sums of 144 products: a few ulps of the output scale apart
    np.testing.assert_allclose(fused(x).asnumpy(), want, rtol=0, atol=2e-6 * np.abs(want).max())

    def run(t):
        return fused(t)

    np.testing.assert_array_equal(ms.jit(run)(x).asnumpy(), fused(x).asnumpy())


def test_conv_with_float16_parameters_computes_in_float32():
    # build_model(weights_dtype=float16) keeps float16 parameters under float32 activations:
    # the kernel must see the bias cast too, or it reads float16 bits as float32
    rng = np.random.default_rng(14)
    conv = Conv2d(5, 7, 3, stride=1, padding=1)
    for param in (conv.weight, conv.bias):
        param.set_dtype(ms.float16)
    x = rng.standard_normal((2, 5, 6, 6)).astype(np.float32)
    w64, b64 = (p.asnumpy().astype(np.float64) for p in (conv.weight, conv.bias))
    want = _conv(x.astype(np.float64), w64, b64, 1, (1, 1, 1, 1))
    got = conv(Tensor(x))
    assert got.dtype == ms.float32
    np.testing.assert_allclose(got.asnumpy(), want, rtol=0, atol=2e-6 * np.abs(want).max())
    with pytest.raises(TypeError, match="float32 tensors only"):
        conv.dnnl(Tensor(x), conv.weight.value().astype(ms.float32), conv.bias.value())

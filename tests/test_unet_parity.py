"""The multiview UNet reproduces the original PyTorch MultiViewUNetModel (tiny config)."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, ops

from mvdream.checkpoint import load_state_dict_into
from mvdream.ldm.modules.diffusionmodules.openaimodel import MultiViewUNetModel
from mvdream.ldm.modules.diffusionmodules.util import timestep_embedding

pytestmark = [pytest.mark.parity]

PREFIX = "model.diffusion_model."
RTOL = 1e-5   # max|err| <= RTOL * max|golden| (README: UNet noise floor <= 1.8e-6)
ATOL = 1e-4


def _build(tiny_config, tiny_state_dict, **overrides):
    params = dict(tiny_config.model.params.unet_config.params)
    params.update(overrides)
    unet = MultiViewUNetModel(**params)
    unet.set_train(False)
    load_state_dict_into(unet, tiny_state_dict, prefix=PREFIX, strict=True)
    return unet


@pytest.fixture(scope="module")
def unet(tiny_config, tiny_state_dict):
    return _build(tiny_config, tiny_state_dict)


@pytest.fixture(scope="module")
def golden(parity_dir):
    return np.load(parity_dir / "unet_tiny.npz")


@pytest.fixture(scope="module")
def inter(parity_dir):
    return np.load(parity_dir / "unet_tiny_intermediates.npz")


def _check(name, got, want, rtol=RTOL, atol=ATOL):
    got = got.asnumpy() if isinstance(got, Tensor) else got
    assert got.shape == want.shape, f"{name}: shape {got.shape} vs {want.shape}"
    err = float(np.abs(got.astype(np.float64) - want).max())
    scale = float(np.abs(want).max())
    assert err <= atol and err <= rtol * scale, f"{name}: max|err| {err:.3g} (max|golden| {scale:.3g})"
    return err


def _run(unet, g, prefix=""):
    camera = g[prefix + "camera"] if prefix + "camera" in g else None
    num_frames = int(g[prefix + "num_frames"]) if prefix + "num_frames" in g else 1
    return unet(Tensor(g[prefix + "x"]), Tensor(g[prefix + "timesteps"]), Tensor(g[prefix + "context"]),
                None if camera is None else Tensor(camera), num_frames=num_frames)


def test_parameter_names_and_count(unet, tiny_state_dict):
    names = {n for n, _ in unet.parameters_and_names()}
    assert names == {k[len(PREFIX):] for k in tiny_state_dict if k.startswith(PREFIX)}
    assert sum(p.size for p in unet.get_parameters()) == 2_217_956


def test_multiview_eps(unet, golden):
    _check("eps", _run(unet, golden), golden["eps"])


def test_single_view_without_camera(unet, golden):
    out = unet(Tensor(golden["x"]), Tensor(golden["timesteps"]), Tensor(golden["context"]), None, num_frames=1)
    _check("single_eps", out, golden["single_eps"])


def test_rectangular_latents(unet, golden):
    _check("rect_eps", _run(unet, golden, "rect_"), golden["rect_eps"])


def test_block_by_block(unet, golden, inter):
    """Every block output of the main case, chained through the port itself."""
    ts, cam = Tensor(golden["timesteps"]), Tensor(golden["camera"])
    context, nf = Tensor(golden["context"]), int(golden["num_frames"])
    _check("t_emb_sinusoidal", timestep_embedding(ts, unet.model_channels), inter["t_emb_sinusoidal"])
    _check("time_embed", unet.time_embed(Tensor(inter["t_emb_sinusoidal"])), inter["time_embed"])
    _check("camera_embed", unet.camera_embed(cam), inter["camera_embed"])
    emb = unet.embed(ts, cam)
    _check("emb_total", emb, inter["emb_total"])

    h, hs = Tensor(golden["x"]), []
    for i, block in enumerate(unet.input_blocks):
        h = block(h, emb, context, num_frames=nf)
        _check(f"input_blocks.{i}", h, inter[f"input_blocks.{i}"])
        hs.append(h)
    h = unet.middle_block(h, emb, context, num_frames=nf)
    _check("middle_block", h, inter["middle_block"])
    for i, block in enumerate(unet.output_blocks):
        h = block(ops.cat([h, hs.pop()], axis=1), emb, context, num_frames=nf)
        _check(f"output_blocks.{i}", h, inter[f"output_blocks.{i}"])
    _check("out", unet.out(h), inter["out"])


def test_num_frames_must_divide_batch(unet, golden):
    with pytest.raises(ValueError, match="num_frames"):
        unet(Tensor(golden["x"][:6]), Tensor(golden["timesteps"][:6]), Tensor(golden["context"][:6]),
             Tensor(golden["camera"][:6]), num_frames=4)


def test_fp16_close_to_fp32(tiny_config, tiny_state_dict, golden):
    """fp16 trunk (norms and softmax in fp32): runs, returns fp32, stays near fp32."""
    unet16 = _build(tiny_config, tiny_state_dict, use_fp16=True)
    assert unet16.dtype == ms.float16
    out = _run(unet16, golden)
    assert out.dtype == ms.float32
    out = out.asnumpy()
    assert np.isfinite(out).all()
    err = np.abs(out - golden["eps"]).max() / np.abs(golden["eps"]).max()
    assert err < 1e-2, f"fp16 relative error {err:.3g}"


def test_attention_core_with_mask():
    """attention() = softmax(q k^T * scale) v per head; masked keys get no weight."""
    from mvdream.ldm.modules.attention import attention

    rng = np.random.default_rng(0)
    b, nq, nk, heads, d = 2, 5, 7, 3, 4
    q, k, v = (rng.standard_normal((b, n, heads * d)).astype(np.float32) for n in (nq, nk, nk))
    mask = rng.random((b, nk)) > 0.3
    mask[:, 0] = True
    split = lambda t: t.reshape(b, -1, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    sim = split(q) @ split(k).transpose(0, 1, 3, 2) * 0.5
    sim = np.where(mask[:, None, None, :], sim, -np.inf)
    p = np.exp(sim - sim.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ split(v)
    ref = ref.transpose(0, 2, 1, 3).reshape(b, nq, heads * d)
    out = attention(Tensor(q), Tensor(k), Tensor(v), heads, 0.5, mask=Tensor(mask))
    _check("attention", out, ref, atol=1e-5)

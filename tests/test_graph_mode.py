"""The frozen forwards compiled as static graphs (``mvdream.graph``) compute what PyNative computes,
and follow their weights when a checkpoint or a dtype cast replaces them after a first call."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from omegaconf import OmegaConf

from mvdream.checkpoint import load_state_dict_into
from mvdream.ldm.models.autoencoder import AutoencoderKL
from mvdream.ldm.modules.diffusionmodules.openaimodel import MultiViewUNetModel
from mvdream.ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder
from test_guidance_parity import make_guidance

PROMPTS = ["a cat wearing a hat", ""]


def _vae(tiny_config, tiny_state_dict, graph_mode):
    params = OmegaConf.to_container(tiny_config.model.params.first_stage_config.params)
    vae = AutoencoderKL(**params, graph_mode=graph_mode)
    load_state_dict_into(vae, tiny_state_dict, prefix="first_stage_model.", strict=True)
    vae.set_train(False)
    for p in vae.get_parameters():
        p.requires_grad = False
    return vae


def _text(tiny_config, tiny_state_dict, graph_mode, **options):
    params = dict(tiny_config.model.params.cond_stage_config.params)
    emb = FrozenOpenCLIPEmbedder(**params, graph_mode=graph_mode, **options)
    load_state_dict_into(emb.model, tiny_state_dict, prefix="cond_stage_model.model.", strict=True)
    return emb


def _assert_close(got, want, rtol=1e-6):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def _image(seed=0, size=32):
    return Tensor(np.random.default_rng(seed).uniform(-1, 1, (2, 3, size, size)).astype(np.float32))


def test_vae_decoder_graph_matches_pynative(tiny_config, tiny_state_dict):
    graph, eager = (_vae(tiny_config, tiny_state_dict, mode) for mode in (True, False))
    z = eager.encode(_image()).mean
    want = eager.decode(z).asnumpy()
    runs = [graph.decode(z).asnumpy() for _ in range(3)]
    _assert_close(runs[0], want)
    assert all(np.array_equal(run, runs[0]) for run in runs)  # a compiled graph is reused as it is


def test_graph_output_is_a_constant_to_autodiff(tiny_config, tiny_state_dict):
    vae = _vae(tiny_config, tiny_state_dict, True)
    z = vae.encode(_image()).mean
    grad = ms.grad(lambda x: (vae.decode(x) + x.sum()).sum())(z).asnumpy()
    np.testing.assert_array_equal(grad, np.full(z.shape, np.prod(vae.decode(z).shape), np.float32))


def test_text_graph_matches_pynative(tiny_config, tiny_state_dict):
    graph, eager = (_text(tiny_config, tiny_state_dict, mode) for mode in (True, False))
    runs = [graph.encode(PROMPTS).asnumpy() for _ in range(3)]
    _assert_close(runs[0], eager.encode(PROMPTS).asnumpy())
    assert all(np.array_equal(run, runs[0]) for run in runs)


def test_graph_follows_weights_loaded_after_its_first_call(tiny_config, tiny_state_dict):
    vae = _vae(tiny_config, tiny_state_dict, True)
    z = vae.encode(_image()).mean
    before = vae.decode(z).asnumpy()  # compiled here
    shifted = {"first_stage_model.decoder.conv_out.bias":
               tiny_state_dict["first_stage_model.decoder.conv_out.bias"] + 1}
    load_state_dict_into(vae, shifted, prefix="first_stage_model.", strict=False)
    _assert_close(vae.decode(z).asnumpy(), before + 1)

    emb = _text(tiny_config, tiny_state_dict, True)
    first = emb.encode(PROMPTS).asnumpy()
    shifted = {"cond_stage_model.model.ln_final.bias": tiny_state_dict["cond_stage_model.model.ln_final.bias"] + 1}
    load_state_dict_into(emb.model, shifted, prefix="cond_stage_model.model.", strict=False)
    _assert_close(emb.encode(PROMPTS).asnumpy(), first + 1)


@pytest.mark.parametrize("graph_mode", [True, False])
def test_text_encoder_repacks_its_gemm_weights_after_a_load(tiny_config, tiny_state_dict, graph_mode):
    # On CPU the frozen encoder's GEMMs read a packed copy of their weights, made at the first
    # call: a later load must be seen, as a freshly built encoder sees it (the same bits).
    emb = _text(tiny_config, tiny_state_dict, graph_mode)
    first = emb.encode(PROMPTS).asnumpy()
    c_fc = emb.model.transformer.resblocks[0].mlp.c_fc
    assert c_fc.affine.packed is not None
    key = "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight"
    changed = {key: 1.5 * tiny_state_dict[key]}
    load_state_dict_into(emb.model, changed, prefix="cond_stage_model.model.", strict=False)
    want = _text(tiny_config, {**tiny_state_dict, **changed}, graph_mode).encode(PROMPTS).asnumpy()
    assert np.abs(want - first).max() > 1e-3 * np.abs(first).max()
    np.testing.assert_array_equal(emb.encode(PROMPTS).asnumpy(), want)


def test_text_encoder_packed_or_not_gives_the_same_features(tiny_config, tiny_state_dict):
    # the same bits on the CPU measured; the tolerance leaves room for another CPU's oneDNN kernels
    packed, plain = (_text(tiny_config, tiny_state_dict, True, pack_weights=option) for option in (True, False))
    got, want = packed.encode(PROMPTS).asnumpy(), plain.encode(PROMPTS).asnumpy()
    assert packed.model.transformer.resblocks[0].attn.in_proj.packed is not None
    assert plain.model.transformer.resblocks[0].attn.in_proj.packed is None
    _assert_close(got, want)


@pytest.mark.parametrize("cast_weights", [False, True])
def test_graph_follows_a_dtype_change_after_its_first_call(tiny_config, tiny_state_dict, cast_weights):
    graph, eager = (_text(tiny_config, tiny_state_dict, mode) for mode in (True, False))
    graph.encode(PROMPTS)  # compiled for float32
    for emb in (graph, eager):
        emb.dtype = ms.float16
        if cast_weights:
            for p in emb.get_parameters():
                p.set_dtype(ms.float16)
    got, want = graph.encode(PROMPTS), eager.encode(PROMPTS)
    assert got.dtype == want.dtype == ms.float16
    # a few float16 ulps (7e-4 of the largest value each): the graph rounds its casts in another order
    _assert_close(got.asnumpy(), want.asnumpy(), rtol=3e-3)


def _unet(tiny_config, tiny_state_dict, graph_mode):
    unet = MultiViewUNetModel(**tiny_config.model.params.unet_config.params, graph_mode=graph_mode)
    unet.set_train(False)
    load_state_dict_into(unet, tiny_state_dict, prefix="model.diffusion_model.", strict=True)
    return unet


def test_unet_graph_matches_pynative(tiny_config, tiny_state_dict, parity_dir):
    golden = np.load(parity_dir / "unet_tiny.npz")
    inputs = [Tensor(golden[name]) for name in ("x", "timesteps", "context", "camera")]
    graph, eager = (_unet(tiny_config, tiny_state_dict, mode) for mode in (True, False))
    runs = [graph(*inputs, num_frames=4).asnumpy() for _ in range(2)]
    _assert_close(runs[0], eager(*inputs, num_frames=4).asnumpy())
    assert np.array_equal(runs[1], runs[0])
    assert len(graph.forward_graph.signatures) == 1
    with pytest.raises(ValueError, match="divisible by num_frames=3"):  # checked before any compile
        graph(*inputs, num_frames=3)


def test_sds_gradients_with_a_graph_unet_match_pynative(parity_dir):
    """x0-SDS runs the UNet inside the training step's autodiff, as a constant: the loss and the
    gradient of the rendered images equal PyNative's on every call, not only the first (a jit
    graph's input gradient under PyNative autodiff goes wrong from the second call on)."""
    guidances = {mode: make_guidance(parity_dir, unet_graph_mode=mode) for mode in (True, False)}
    assert [g.model.model.diffusion_model.graph_mode for g in guidances.values()] == [True, False]
    rng = np.random.default_rng(0)
    c2w = Tensor(np.tile(np.eye(4, dtype=np.float32), (4, 1, 1)))
    embeddings = Tensor(rng.standard_normal((8, 77, 64)).astype(np.float32))
    for timestep in (700, 300, 500):
        rgb = Tensor(rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32))
        noise = Tensor(rng.standard_normal((4, 4, 8, 8)).astype(np.float32))
        posterior_noise = Tensor(rng.standard_normal((4, 4, 8, 8)).astype(np.float32))
        results = {}
        for mode, guidance in guidances.items():
            def loss_of(images, guidance=guidance):
                return guidance(images, None, None, None, None, c2w, timestep=timestep, noise=noise,
                                text_embeddings=embeddings, posterior_noise=posterior_noise)["loss_sds"]
            results[mode] = ms.value_and_grad(loss_of)(rgb)
        (graph_loss, graph_grad), (eager_loss, eager_grad) = results[True], results[False]
        _assert_close(graph_loss.asnumpy(), eager_loss.asnumpy())
        _assert_close(graph_grad.asnumpy(), eager_grad.asnumpy())
    # one graph, compiled at the first call and reused by the others
    assert len(guidances[True].model.model.diffusion_model.forward_graph.signatures) == 1

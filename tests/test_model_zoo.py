"""model_zoo (names, shipped configs, offline behaviour, build_model) and the
LatentDiffusionInterface's wiring and strict loading, with stub sub-networks
(tests/_stub_cells.py) standing in for the UNet, VAE and text encoder."""
import numpy as np
import pytest
from mindspore import Tensor
from omegaconf import OmegaConf

from mvdream.checkpoint import CheckpointError, save_state_dict
from mvdream.ldm.util import get_obj_from_str, instantiate_from_config
from mvdream.model_zoo import (PRETRAINED_MODELS, ModelNotAvailableError, build_model, download_checkpoint,
                               get_config_file, load_model_config)


def stub_config(with_last_block=True):
    return {
        "target": "mvdream.ldm.interface.LatentDiffusionInterface",
        "params": {
            "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "scale_factor": 0.18215,
            "parameterization": "eps",
            "unet_config": {"target": "_stub_cells.StubUNet", "params": {"image_size": 8}},
            "first_stage_config": {"target": "_stub_cells.StubVAE", "params": {"embed_dim": 4}},
            "cond_stage_config": {"target": "_stub_cells.StubText", "params": {"with_last_block": with_last_block}},
        },
    }


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("sd-v3-8view")
    text = str(err.value)
    assert "sd-v3-8view" in text and all(name in text for name in PRETRAINED_MODELS)


def test_offline_without_cache_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network
    with pytest.raises(ModelNotAvailableError) as err:
        build_model("sd-v2.1-base-4view", cache_dir=tmp_path)
    text = str(err.value)
    assert "\n" not in text
    assert "sd-v2.1-base-4view.pt" in text and "--ckpt_path" in text
    assert "https://huggingface.co/MVDream/MVDream" in text
    with pytest.raises(ModelNotAvailableError) as err:
        download_checkpoint("MVDream/MVDream", "sd-v1.5-4view.pt", cache_dir=tmp_path,
                            option="system.guidance.ckpt_path=")
    assert "sd-v1.5-4view.pt" in str(err.value) and "system.guidance.ckpt_path=" in str(err.value)


def test_unreachable_hub_gives_one_line_at_once(tmp_path, monkeypatch, capfd):
    """No network and no cache: one line, without huggingface_hub's retry messages."""
    import socket

    from huggingface_hub import constants
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelNotAvailableError) as err:
        download_checkpoint("MVDream/MVDream", "sd-v2.1-base-4view.pt", cache_dir=tmp_path)
    text = str(err.value)
    assert "\n" not in text and "cannot be reached" in text and "--ckpt_path" in text
    captured = capfd.readouterr()
    assert "Retrying" not in captured.out + captured.err


def test_offline_uses_the_cache(tmp_path, monkeypatch):
    # A file already in the hub cache layout is found without network.
    snapshot = tmp_path / "models--MVDream--MVDream" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "sd-v1.5-4view.pt").write_bytes(b"x")
    (tmp_path / "models--MVDream--MVDream" / "refs").mkdir()
    (tmp_path / "models--MVDream--MVDream" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = download_checkpoint("MVDream/MVDream", "sd-v1.5-4view.pt", cache_dir=tmp_path)
    assert path.endswith("sd-v1.5-4view.pt") and open(path, "rb").read() == b"x"


def test_shipped_configs(tiny_config):
    for name, info in PRETRAINED_MODELS.items():
        assert info["repo_id"] == "MVDream/MVDream" and info["filename"] == f"{name}.pt"
        assert get_config_file(info["config"]).is_file()
    v2 = load_model_config("sd-v2.1-base-4view")
    assert v2.target == "mvdream.ldm.interface.LatentDiffusionInterface"
    assert v2.params.unet_config.target == "mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel"
    assert v2.params.first_stage_config.target == "mvdream.ldm.models.autoencoder.AutoencoderKL"
    assert v2.params.cond_stage_config.target == "mvdream.ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"
    unet = v2.params.unet_config.params
    assert (unet.model_channels, list(unet.channel_mult), list(unet.attention_resolutions), unet.context_dim,
            unet.num_head_channels, unet.camera_dim) == (320, [1, 2, 4, 4], [4, 2, 1], 1024, 64, 16)
    assert v2.params.first_stage_config.params.ddconfig.ch == 128
    assert dict(v2.params.cond_stage_config.params) == {"freeze": True, "layer": "penultimate"}
    # same schema as the tiny parity config (which only adds the text tower's arch/version/device),
    # plus the port's graph-mode UNet
    assert unet.graph_mode is True
    flat = lambda c: set(OmegaConf.to_container(c, resolve=True).keys())  # noqa: E731
    tiny = tiny_config.model
    assert flat(v2.params) == flat(tiny.params)
    assert flat(v2.params.unet_config.params) == flat(tiny.params.unet_config.params) | {"graph_mode"}
    assert flat(v2.params.first_stage_config.params.ddconfig) == flat(tiny.params.first_stage_config.params.ddconfig)
    v1 = load_model_config("sd-v1.5-4view")
    assert v1.params.unet_config.params.context_dim == 768 and v1.params.unet_config.params.num_heads == 8
    assert v1.params.cond_stage_config.target == "mvdream.ldm.modules.encoders.modules.FrozenCLIPEmbedder"


def test_instantiate_from_config():
    assert instantiate_from_config("__is_unconditional__") is None
    with pytest.raises(KeyError):
        instantiate_from_config({"params": {}})
    with pytest.raises(ImportError):
        get_obj_from_str("mvdream.ldm.util.NoSuchThing")
    cell = instantiate_from_config(OmegaConf.create(
        {"target": "mvdream.ldm.modules.torch_layers.Linear", "params": {"in_features": 3, "out_features": 2}}))
    assert cell.weight.shape == (2, 3)


def test_interface_wiring_and_maths():
    ldi = instantiate_from_config(stub_config())
    names = [n for n, _ in ldi.parameters_and_names()]
    assert names[:12] == ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                          "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                          "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                          "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]
    assert "model.diffusion_model.time_embed.0.weight" in names
    assert "first_stage_model.encoder.conv_in.weight" in names
    assert "cond_stage_model.model.token_embedding.weight" in names
    assert not any(p.name in ("betas", "alphas_cumprod") for p in ldi.trainable_params())
    x = Tensor(np.ones((4, 4, 8, 8), np.float32))
    cond = {"context": Tensor(np.zeros((4, 77, 4), np.float32)), "camera": Tensor(np.zeros((4, 16), np.float32)),
            "num_frames": 4}
    out = ldi.apply_model(x, Tensor(np.array([600])), cond)
    np.testing.assert_array_equal(out.asnumpy(), 2 * np.ones((4, 4, 8, 8), np.float32))
    call = ldi.model.diffusion_model.last_call
    np.testing.assert_array_equal(call["timesteps"].asnumpy(), [600] * 4)  # 1-element t repeated
    assert call["num_frames"] == 4 and call["camera"].shape == (4, 16)
    ldi.apply_model(x, 250, cond)  # a plain int works too
    np.testing.assert_array_equal(ldi.model.diffusion_model.last_call["timesteps"].asnumpy(), [250] * 4)
    assert ldi.get_learned_conditioning(["abc", "de"]).shape == (2, 77, 4)
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    noise = np.full_like(z, 0.5)
    enc = ldi.get_first_stage_encoding(ldi.encode_first_stage(Tensor(z)), noise=Tensor(noise))
    np.testing.assert_allclose(enc.asnumpy(), np.float32(0.18215) * (z + noise), rtol=1e-6)
    np.testing.assert_allclose(ldi.get_first_stage_encoding(Tensor(z)).asnumpy(), np.float32(0.18215) * z,
                               rtol=1e-6)
    np.testing.assert_allclose(ldi.decode_first_stage(Tensor(z)).asnumpy(), z * np.float32(1 / 0.18215), rtol=1e-6)


@pytest.mark.parametrize("with_last_block", [True, False])
def test_strict_load_of_the_tiny_checkpoint(tiny_state_dict, with_last_block):
    ldi = instantiate_from_config(stub_config(with_last_block))
    missing, unexpected = ldi.load_state_dict(tiny_state_dict, strict=True, source="tiny_mvdream.pt")
    assert missing == [] and unexpected == []
    params = dict(ldi.parameters_and_names())
    for key in ("betas", "posterior_mean_coef2", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.conv_out.bias", "cond_stage_model.model.positional_embedding"):
        np.testing.assert_array_equal(params[key].asnumpy(), tiny_state_dict[key], err_msg=key)
    assert ("cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in params) == with_last_block


def test_strict_load_reports_missing_and_unexpected(tiny_state_dict):
    ldi = instantiate_from_config(stub_config())
    broken = dict(tiny_state_dict)
    del broken["model.diffusion_model.time_embed.0.bias"]
    broken["model.diffusion_model.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as err:
        ldi.load_state_dict(broken, source="broken.pt")
    text = str(err.value)
    assert "\n" not in text and text.startswith("broken.pt")
    assert "missing model.diffusion_model.time_embed.0.bias" in text
    assert "unexpected model.diffusion_model.extra.weight" in text
    # Only the *last* text block may be dropped, and only when the model lacks it.
    partial = dict(tiny_state_dict)
    for key in [k for k in partial if k.startswith("cond_stage_model.model.transformer.resblocks.1.")]:
        del partial[key]
    with pytest.raises(CheckpointError, match="missing cond_stage_model.model.transformer.resblocks.1"):
        ldi.load_state_dict(partial)
    result = ldi.load_state_dict(broken, strict=False)
    assert result.missing_keys == ["model.diffusion_model.time_embed.0.bias"]
    assert result.unexpected_keys == ["model.diffusion_model.extra.weight"]


def test_build_model_from_local_config_and_checkpoint(tmp_path, tiny_state_dict):
    config_path = tmp_path / "stub.yaml"
    OmegaConf.save(OmegaConf.create({"model": stub_config(with_last_block=False)}), config_path)
    ckpt = save_state_dict(tiny_state_dict, tmp_path / "tiny.safetensors")
    model = build_model(None, ckpt_path=ckpt, config_path=config_path)
    np.testing.assert_allclose(model.sqrt_alphas_cumprod.asnumpy(), tiny_state_dict["sqrt_alphas_cumprod"], rtol=1e-6)
    with pytest.raises(CheckpointError) as err:
        build_model(None, ckpt_path=tmp_path / "absent.pt", config_path=config_path)
    assert str(tmp_path / "absent.pt") in str(err.value)
    with pytest.raises(ValueError, match="ckpt_path"):
        build_model(None, config_path=config_path)


def test_interface_with_real_vae_and_text_encoder(tmp_path, parity_dir, tiny_config):
    """build_model on the tiny .pt with the port's VAE and OpenCLIP (UNet stubbed):
    conditioning and first-stage encode/decode reproduce the PyTorch goldens."""
    config = OmegaConf.create({"model": OmegaConf.to_container(tiny_config.model)})
    config.model.params.unet_config = {"target": "_stub_cells.StubUNet"}
    OmegaConf.save(config, tmp_path / "tiny_stub_unet.yaml")
    ldi = build_model(None, ckpt_path=parity_dir / "tiny_mvdream.pt", config_path=tmp_path / "tiny_stub_unet.yaml")
    ldm, vae = np.load(parity_dir / "ldm_tiny.npz"), np.load(parity_dir / "vae_tiny.npz")

    def check(actual, golden, name):
        err = np.abs(actual.asnumpy() - golden).max() / np.abs(golden).max()
        assert err <= 1e-5, f"{name}: {err:.3g}"
    check(ldi.get_learned_conditioning(["an astronaut riding a horse, 3d asset"]), ldm["cond"], "cond")
    check(ldi.get_learned_conditioning([""]), ldm["uncond"], "uncond")
    posterior = ldi.encode_first_stage(Tensor(vae["image"]))
    check(ldi.get_first_stage_encoding(posterior, noise=Tensor(vae["sample_eps"])), vae["first_stage_encoding"],
          "first_stage_encoding")
    check(ldi.decode_first_stage(Tensor(vae["z"])), vae["decode_first_stage"], "decode_first_stage")


def test_build_model_tiny_full_stack(parity_dir):
    """The documented integration call: the tiny config + .pt load strictly into the
    real UNet/VAE/OpenCLIP, and the assembled model predicts the golden noise."""
    ldi = build_model(None, ckpt_path=parity_dir / "tiny_mvdream.pt", config_path=parity_dir / "tiny_mvdream.yaml")
    unet = np.load(parity_dir / "unet_tiny.npz")
    cond = {"context": Tensor(unet["context"]), "camera": Tensor(unet["camera"]), "num_frames": int(unet["num_frames"])}
    eps = ldi.apply_model(Tensor(unet["x"]), Tensor(unet["timesteps"]), cond).asnumpy()
    assert np.abs(eps - unet["eps"]).max() / np.abs(unet["eps"]).max() <= 1e-5


def test_build_model_in_float16(parity_dir):
    """weights_dtype=float16 stores the network weights in fp16 (schedule stays fp32) and the
    multiview UNet still predicts the golden noise to fp16 accuracy."""
    import mindspore as ms

    ldi = build_model(None, ckpt_path=parity_dir / "tiny_mvdream.pt", config_path=parity_dir / "tiny_mvdream.yaml",
                      weights_dtype=ms.float16)
    params = dict(ldi.parameters_and_names())
    assert params["model.diffusion_model.input_blocks.0.0.weight"].dtype == ms.float16
    assert params["first_stage_model.encoder.conv_in.weight"].dtype == ms.float16
    assert params["alphas_cumprod"].dtype == ms.float32
    unet = np.load(parity_dir / "unet_tiny.npz")
    cond = {"context": Tensor(unet["context"]), "camera": Tensor(unet["camera"]), "num_frames": 4}
    eps = ldi.apply_model(Tensor(unet["x"]), Tensor(unet["timesteps"]), cond)
    assert eps.dtype == ms.float32
    assert np.abs(eps.asnumpy() - unet["eps"]).max() / np.abs(unet["eps"]).max() < 1e-2

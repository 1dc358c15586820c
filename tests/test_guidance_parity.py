"""multiview-diffusion-guidance against the PyTorch goldens of the original forward
(tests/fixtures/parity/guidance_tiny.npz, section (e) of its README), with the tiny MVDream model
loaded from tiny_mvdream.pt, plus the guidance's bookkeeping (freezing, schedules, RNG)."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

import threestudio
from threestudio.utils.resize import resize_bilinear
from mvdream.model_zoo import ModelNotAvailableError

pytestmark = [pytest.mark.parity]

# README (e): losses rtol 1e-5; noise predictions, recon latents, gradients rtol 1e-4.
RTOL_LOSS, RTOL = 1e-5, 1e-4


def make_guidance(parity_dir, **overrides):
    cfg = {"config_path": str(parity_dir / "tiny_mvdream.yaml"), "ckpt_path": str(parity_dir / "tiny_mvdream.pt"),
           "half_precision_weights": False, "guidance_scale": 50.0, "recon_std_rescale": 0.5, "n_view": 4,
           "image_size": 16, "seed": 0}
    cfg.update(overrides)
    return threestudio.find("multiview-diffusion-guidance")(cfg)


@pytest.fixture(scope="module")
def golden(parity_dir):
    return dict(np.load(parity_dir / "guidance_tiny.npz"))


@pytest.fixture(scope="module")
def guidance(parity_dir):
    return make_guidance(parity_dir)


def check(actual, expected, rtol, name):
    actual = actual.asnumpy() if isinstance(actual, Tensor) else np.asarray(actual)
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    scale = float(np.abs(expected).max())
    print(f"{name:28s} max abs err {err:.3e}  rel {err / scale:.3e}")
    assert actual.shape == expected.shape, name
    assert err <= rtol * scale, f"{name}: max abs err {err:.3g} > {rtol} * {scale:.3g}"


def sds_call(guidance, golden, latents, **kwargs):
    return guidance(latents, None, None, None, None, Tensor(golden["c2w"]), timestep=int(golden["t"]),
                    text_embeddings=Tensor(golden["text_embeddings"]), **kwargs)


def check_loss_and_grad(guidance, golden, latents, noise, prefix):
    """Loss, grad_norm and d loss / d latents of the latent-input call vs ``<prefix>_*`` goldens."""
    def loss_fn(x):
        return sds_call(guidance, golden, x, input_is_latent=True, noise=noise)["loss_sds"]
    result = sds_call(guidance, golden, latents, input_is_latent=True, noise=noise)
    check(result["loss_sds"], golden[f"{prefix}_loss"], RTOL_LOSS, f"{prefix}_loss")
    check(result["grad_norm"], golden[f"{prefix}_grad_norm"], RTOL_LOSS, f"{prefix}_grad_norm")
    check(ms.grad(loss_fn)(latents), golden[f"{prefix}_grad"], RTOL, f"{prefix}_grad")
    return result


def test_x0_sds_matches_original(guidance, golden):
    assert int(golden["t"]) == 600 and float(golden["guidance_scale"]) == 50
    latents, noise = Tensor(golden["latents"]), Tensor(golden["noise"])
    t = Tensor(np.array([600], np.int64))
    check(guidance.get_camera_cond(Tensor(golden["c2w"])).tile((2, 1)), golden["camera_cond"], 1e-6, "camera_cond")
    out = guidance.compute_target(latents, t, noise, Tensor(golden["text_embeddings"]), Tensor(golden["c2w"]))
    for name, key, rtol in [("latents_noisy", "recon_latents_noisy", 1e-6),
                            ("noise_pred_text", "recon_noise_pred_text", RTOL),
                            ("noise_pred_uncond", "recon_noise_pred_uncond", RTOL),
                            ("noise_pred", "recon_noise_pred_cfg", RTOL),
                            ("recon_cfg", "recon_latents_recon_cfg", RTOL),
                            ("recon_nocfg", "recon_latents_recon_nocfg", RTOL),
                            ("std_factor", "recon_std_factor", RTOL_LOSS),
                            ("target", "recon_latents_recon", RTOL)]:
        check(out[name], golden[key], rtol, key)

    result = check_loss_and_grad(guidance, golden, latents, noise, "recon")
    assert result["timestep"] == 600


def test_plain_sds_matches_original(parity_dir, golden):
    guidance = make_guidance(parity_dir, recon_loss=False)
    latents, noise = Tensor(golden["latents"]), Tensor(golden["noise"])
    out = guidance.compute_target(latents, Tensor(np.array([600], np.int64)), noise,
                                  Tensor(golden["text_embeddings"]), Tensor(golden["c2w"]))
    check(out["w"], golden["sds_w"], 1e-6, "sds_w")
    check(out["noise_pred"], golden["sds_noise_pred_cfg"], RTOL, "sds_noise_pred_cfg")
    check(out["grad"], golden["sds_grad_var"], RTOL, "sds_grad_var")

    check_loss_and_grad(guidance, golden, latents, noise, "sds")


def test_rgb_path_matches_original(guidance, golden):
    """BHWC render -> bilinear resize to 16 -> VAE encode (with gradient) -> x0-SDS."""
    rgb, eps, noise = Tensor(golden["rgb"]), Tensor(golden["rgb_posterior_eps"]), Tensor(golden["rgb_noise"])
    assert int(golden["rgb_image_size"]) == guidance.cfg.image_size == 16
    pred_rgb = resize_bilinear(Tensor(golden["rgb"].transpose(0, 3, 1, 2)), 16, 16)
    check(pred_rgb, golden["rgb_pred_rgb"], 1e-6, "rgb_pred_rgb")
    check(guidance.encode_images(pred_rgb, eps), golden["rgb_latents"], 1e-5, "rgb_latents")

    def loss_fn(x):
        return sds_call(guidance, golden, x, posterior_noise=eps, noise=noise)["loss_sds"]
    result = sds_call(guidance, golden, rgb, posterior_noise=eps, noise=noise)
    check(result["loss_sds"], golden["rgb_loss"], RTOL_LOSS, "rgb_loss")
    check(result["grad_norm"], golden["rgb_grad_norm_latents"], RTOL_LOSS, "rgb_grad_norm_latents")
    check(ms.grad(loss_fn)(rgb), golden["rgb_grad"], RTOL, "rgb_grad")


def test_resize_is_torch_bilinear():
    """Up- and down-sampling against a direct NumPy statement of torch's
    align_corners=False bilinear rule (source = (dst + 0.5) * in/out - 0.5, clamped)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)

    def reference(img, out_h, out_w):
        def axis(out_n, in_n):
            src = np.maximum((np.arange(out_n) + 0.5) * in_n / out_n - 0.5, 0)
            lo = np.minimum(np.floor(src).astype(int), in_n - 1)
            return lo, np.minimum(lo + 1, in_n - 1), src - lo
        (y0, y1, fy), (x0, x1, fx) = axis(out_h, img.shape[2]), axis(out_w, img.shape[3])
        top = img[:, :, y0][..., x0] * (1 - fx) + img[:, :, y0][..., x1] * fx
        bottom = img[:, :, y1][..., x0] * (1 - fx) + img[:, :, y1][..., x1] * fx
        return top * (1 - fy)[:, None] + bottom * fy[:, None]
    for size in [(11, 4), (3, 16), (5, 7)]:
        np.testing.assert_allclose(resize_bilinear(Tensor(x), *size).asnumpy(), reference(x, *size), atol=1e-6)


def test_model_is_frozen_and_outside_the_cell_tree(guidance):
    assert guidance.trainable_params() == [] and list(guidance.get_parameters()) == []
    params = list(guidance.model.get_parameters())
    assert len(params) > 600 and not any(p.requires_grad for p in params)

    class System(nn.Cell):  # what the system's optimizer collects
        def __init__(self):
            super().__init__()
            self.guidance = guidance
            self.w = ms.Parameter(Tensor(np.zeros(3, np.float32)))
    assert [p.name for p in System().trainable_params()] == ["w"]


def test_training_keeps_no_packed_text_encoder_weights(guidance):
    # the prompt processor encodes each prompt once: no packed GEMM copy held all run
    guidance.encode_text(["a cat", ""])
    in_proj = guidance.model.cond_stage_model.model.transformer.resblocks[0].attn.in_proj
    assert guidance.model.cond_stage_model.pack_weights is False
    assert in_proj.fused is not None and in_proj.packed is None


def test_schedule_rng_and_timestep_draws(parity_dir, golden):
    guidance = make_guidance(parity_dir, min_step_percent=[0, 0.98, 0.02, 100], max_step_percent=[0, 0.98, 0.5, 100])
    assert (guidance.min_step, guidance.max_step) == (980, 980)
    guidance.do_update_step(0, 50)
    assert (guidance.min_step, guidance.max_step) == (500, 740)
    guidance.do_update_step(0, 200)
    assert (guidance.min_step, guidance.max_step) == (20, 500)
    latents = Tensor(golden["latents"])

    def step():
        out = sds_call(guidance, golden, latents, input_is_latent=True)
        del out["timestep"]  # drawn: compare through the loss
        return out
    state = guidance.get_rng_state()
    draws = [guidance._timestep(None).asnumpy()[0] for _ in range(200)]
    assert min(draws) >= 20 and max(draws) <= 500 and len(set(draws)) > 100
    guidance.set_rng_state(state)
    first = step()["loss_sds"].asnumpy()
    guidance.set_rng_state(state)
    assert step()["loss_sds"].asnumpy() == first  # exact resume
    assert step()["loss_sds"].asnumpy() != first  # a fresh draw differs


def test_offline_error_names_the_config_option(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelNotAvailableError) as err:
        threestudio.find("multiview-diffusion-guidance")({})
    text = str(err.value)
    assert "\n" not in text and "system.guidance.ckpt_path=/path/to/sd-v2.1-base-4view.pt" in text
    assert "https://huggingface.co/MVDream/MVDream" in text


def test_half_precision_runs_close(parity_dir, golden):
    """half_precision_weights: fp16 compute inside the model, fp32 loss; close to fp32."""
    guidance = make_guidance(parity_dir, half_precision_weights=True)
    assert guidance.model.compute_dtype == ms.float16
    result = sds_call(guidance, golden, Tensor(golden["latents"]), input_is_latent=True,
                      noise=Tensor(golden["noise"]))
    assert result["loss_sds"].dtype == ms.float32
    guidance.set_half_precision(False)  # back to fp32 compute
    assert guidance.model.compute_dtype == ms.float32
    err = abs(float(result["loss_sds"].asnumpy()) - float(golden["recon_loss"])) / float(golden["recon_loss"])
    print(f"fp16 recon_loss rel err {err:.2e}")
    assert err < 2e-2


def test_bench_tool_runs_on_the_tiny_config():
    import bench_guidance  # tools/ is on sys.path (conftest)
    guidance, _ = bench_guidance.build_guidance(tiny=True, fp16=False)  # mvdream-tiny.yaml's guidance settings
    assert guidance.text_encoder_key is None  # random weights: embeddings are not cached
    result = bench_guidance.bench(guidance, size=8, batch=4, iters=1, warmup=0)
    assert set(result) == {"total_s", "vae_encode_s", "unet_s", "other_forward_s", "backward_s"}
    assert all(v >= 0 for v in result.values()) and result["unet_s"] < result["total_s"]
    assert "compute_target" not in vars(guidance)  # the timing wrappers are removed


def test_chunked_vae_gradient_equals_plain(parity_dir, golden):
    """vae_grad_chunk_size re-encodes per chunk in the backward: same loss and rgb gradient."""
    results = []
    for chunk in (0, 1):
        guidance = make_guidance(parity_dir, seed=3, vae_grad_chunk_size=chunk)

        def loss_fn(x):
            return guidance(x, None, None, None, None, Tensor(golden["c2w"]), timestep=600,
                            text_embeddings=Tensor(golden["text_embeddings"]))["loss_sds"]
        results.append(ms.value_and_grad(loss_fn)(Tensor(golden["rgb"])))
    (loss0, grad0), (loss1, grad1) = results
    # mathematically equal fp32 paths: equal to a relative 1e-6 of the gradient's scale on any CPU
    assert float(loss1.asnumpy()) == pytest.approx(float(loss0.asnumpy()), rel=1e-6)
    scale = np.abs(grad0.asnumpy()).max()
    assert scale > 0
    np.testing.assert_allclose(grad1.asnumpy(), grad0.asnumpy(), rtol=1e-6, atol=1e-6 * scale)


def test_one_precision_rule(parity_dir):
    """fp16 compute when half_precision_weights (the original's key) or trainer.precision=16-mixed."""
    from threestudio.models.guidance.multiview_diffusion_guidance import compute_in_fp16
    assert compute_in_fp16(True, 32) and compute_in_fp16(False, "16-mixed") and compute_in_fp16(False, 16)
    assert not compute_in_fp16(False, 32) and not compute_in_fp16(False, "32-true")
    cfg = {"config_path": str(parity_dir / "tiny_mvdream.yaml"), "ckpt_path": str(parity_dir / "tiny_mvdream.pt")}
    make = threestudio.find("multiview-diffusion-guidance")
    assert make({**cfg, "half_precision_weights": False}, precision="16-mixed").model.compute_dtype == ms.float16
    assert make({**cfg, "half_precision_weights": True}, precision=32).model.compute_dtype == ms.float16
    assert make({**cfg, "half_precision_weights": False}, precision=32).model.compute_dtype == ms.float32

"""DDIM sampling with classifier-free guidance reproduces the original run in ldm_tiny.npz."""
import numpy as np
import pytest
from mindspore import Tensor

from mvdream.ldm.models.diffusion.ddim import DDIMSampler
from mvdream.model_zoo import build_model
from mvdream.t2i import t2i

pytestmark = [pytest.mark.parity]


@pytest.fixture(scope="module")
def tiny_model(parity_dir):
    model = build_model(None, ckpt_path=parity_dir / "tiny_mvdream.pt", config_path=parity_dir / "tiny_mvdream.yaml")
    model.set_train(False)
    return model


@pytest.fixture(scope="module")
def ldm(parity_dir):
    return np.load(parity_dir / "ldm_tiny.npz")


def _close(actual, golden, rtol=5e-5, atol=1e-4, name=""):
    actual = actual.asnumpy() if isinstance(actual, Tensor) else np.asarray(actual)
    err = np.abs(actual.astype(np.float64) - golden.astype(np.float64)).max()
    assert err <= atol and err <= rtol * max(np.abs(golden).max(), 1e-12), f"{name}: max abs err {err:.3g}"


def _conditioning(ldm, n):
    camera = Tensor(ldm["ddim_camera"])
    num_frames = int(ldm["ddim_num_frames"])
    cond = {"context": Tensor(np.repeat(ldm["cond"], n, 0)), "camera": camera, "num_frames": num_frames}
    uncond = {"context": Tensor(np.repeat(ldm["uncond"], n, 0)), "camera": camera, "num_frames": num_frames}
    return cond, uncond


def test_ddim_schedule_matches(tiny_model, ldm):
    sampler = DDIMSampler(tiny_model)
    sampler.make_schedule(5, ddim_eta=0.0)
    np.testing.assert_array_equal(sampler.ddim_timesteps, ldm["ddim_timesteps"])
    np.testing.assert_allclose(sampler.ddim_alphas, ldm["ddim_alphas"], rtol=1e-6)
    np.testing.assert_allclose(sampler.ddim_alphas_prev, ldm["ddim_alphas_prev"], rtol=1e-12)
    np.testing.assert_allclose(sampler.ddim_sigmas, ldm["ddim_sigmas"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(sampler.ddim_sqrt_one_minus_alphas, ldm["ddim_sqrt_one_minus_alphas"], rtol=1e-6)


def test_ddim_every_step_and_decode_match(tiny_model, ldm):
    x_T = ldm["ddim_x_T"]
    cond, uncond = _conditioning(ldm, x_T.shape[0])
    sampler = DDIMSampler(tiny_model)
    samples, inter = sampler.sample(S=5, batch_size=x_T.shape[0], shape=list(x_T.shape[1:]), conditioning=cond,
                                    unconditional_conditioning=uncond,
                                    unconditional_guidance_scale=float(ldm["ddim_scale"]), eta=0.0,
                                    x_T=Tensor(x_T), log_every_t=1, verbose=False)
    assert len(inter["x_inter"]) == len(ldm["ddim_x_inter"]) == 6
    for i in range(6):
        _close(inter["x_inter"][i], ldm["ddim_x_inter"][i], name=f"x_inter[{i}]")
        if i > 0:
            _close(inter["pred_x0"][i], ldm["ddim_pred_x0"][i], name=f"pred_x0[{i}]")
    _close(samples, ldm["ddim_samples"], name="samples")
    decoded = tiny_model.decode_first_stage(samples)
    _close(decoded, ldm["ddim_decoded"], name="decoded")
    _close(np.clip((decoded.asnumpy() + 1) / 2, 0, 1), ldm["ddim_images01"], name="images01")


def test_t2i_images_match_uint8_golden(tiny_model, ldm):
    x_T = ldm["ddim_x_T"]
    images = t2i(tiny_model, 16, "an astronaut riding a horse, 3d asset", Tensor(ldm["uncond"]),
                 DDIMSampler(tiny_model), steps=5, scale=float(ldm["ddim_scale"]), batch_size=4,
                 camera=Tensor(ldm["ddim_camera"]), num_frames=4, x_T=Tensor(x_T), verbose=False)
    got = np.stack(images).astype(np.int16)
    assert got.shape == ldm["ddim_images_uint8"].shape
    assert np.abs(got - ldm["ddim_images_uint8"].astype(np.int16)).max() <= 1

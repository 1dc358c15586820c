"""Noise schedule, forward-process helpers and camera utilities vs the PyTorch goldens."""
import numpy as np
import pytest
from mindspore import Tensor

from mvdream.camera_utils import (convert_opengl_to_blender, create_camera_to_world_matrix, get_camera,
                                  get_camera_np, normalize_camera)
from mvdream.ldm.modules.diffusionmodules.schedule import (SCHEDULE_BUFFERS, DiffusionSchedule,
                                                           extract_into_tensor, make_beta_schedule)

pytestmark = [pytest.mark.parity]


def assert_close(actual, golden, rtol, name=""):
    actual = actual.asnumpy() if hasattr(actual, "asnumpy") else np.asarray(actual)
    assert actual.shape == golden.shape, (name, actual.shape, golden.shape)
    err = np.abs(actual.astype(np.float64) - golden).max() / max(np.abs(golden).max(), 1e-30)
    assert err <= rtol, f"{name}: rel err {err:.3g} > {rtol}"


@pytest.fixture(scope="module")
def ldm(parity_dir):
    return np.load(parity_dir / "ldm_tiny.npz")


@pytest.fixture(scope="module")
def schedule():
    return DiffusionSchedule(beta_schedule="linear", timesteps=1000, linear_start=0.00085, linear_end=0.0120)


def test_beta_schedule_float64(ldm):
    betas = make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.0120)
    assert betas.dtype == np.float64
    assert_close(betas, ldm["sched_betas_f64"], 1e-12, "betas_f64")
    assert_close(np.cumprod(1 - betas), ldm["sched_alphas_cumprod_f64"], 1e-12, "alphas_cumprod_f64")
    cosine = make_beta_schedule("cosine", 10)
    assert cosine.shape == (10,) and 0 < cosine.min() and cosine.max() <= 0.999
    with pytest.raises(ValueError):
        make_beta_schedule("exotic", 10)


def test_schedule_buffers_match_register_schedule(schedule, ldm):
    names = [name for name, _ in schedule.parameters_and_names()]
    assert names == list(SCHEDULE_BUFFERS)
    assert schedule.trainable_params() == []  # buffers, not trained
    assert schedule.num_timesteps == 1000
    for name in SCHEDULE_BUFFERS:
        value = getattr(schedule, name).asnumpy()
        assert value.dtype == np.float32
        # f64 maths, then cast: equal up to the last bit another libm may round differently
        np.testing.assert_allclose(value, ldm[f"sched_{name}"], rtol=1e-6, atol=1e-12, err_msg=name)


def test_forward_process_helpers(schedule, ldm):
    x, noise, v, t, t1 = (Tensor(ldm[k]) for k in ("x_start", "noise", "v", "t", "t1"))
    xt, xt1 = Tensor(ldm["q_sample"]), Tensor(ldm["q_sample_t1"])
    assert_close(schedule.q_sample(x, t, noise), ldm["q_sample"], 1e-6, "q_sample")
    assert_close(schedule.predict_start_from_noise(xt, t, noise), ldm["predict_start_from_noise"], 1e-6, "pred")
    # a 1-element t broadcasts over the batch (the guidance's single timestep)
    assert ldm["t1"].shape == (1,)
    assert_close(schedule.q_sample(x, t1, noise), ldm["q_sample_t1"], 1e-6, "q_sample_t1")
    assert_close(schedule.predict_start_from_noise(xt1, t1, noise), ldm["predict_start_from_noise_t1"], 1e-6,
                 "pred_t1")
    assert_close(schedule.q_sample(x, int(ldm["t1"][0]), noise), ldm["q_sample_t1"], 1e-6, "q_sample_int")
    assert_close(schedule.get_v(x, noise, t), ldm["get_v"], 1e-6, "get_v")
    assert_close(schedule.predict_start_from_z_and_v(xt, t, v), ldm["predict_start_from_z_and_v"], 1e-6, "x0_v")
    assert_close(schedule.predict_eps_from_z_and_v(xt, t, v), ldm["predict_eps_from_z_and_v"], 1e-6, "eps_v")
    # the noisy sample really is invertible: x0 comes back
    assert_close(schedule.predict_start_from_noise(xt, t, noise), ldm["x_start"], 1e-4, "x0")


def test_extract_into_tensor_shapes(schedule):
    out = extract_into_tensor(schedule.alphas_cumprod, Tensor(np.array([0, 999], np.int64)), (2, 4, 8, 8))
    assert out.shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(out.asnumpy().ravel(), schedule.alphas_cumprod.asnumpy()[[0, 999]])


# -------------------------------------------------------------------- cameras
@pytest.fixture(scope="module")
def cam(parity_dir):
    return np.load(parity_dir / "camera_utils.npz")


def test_get_camera(cam):
    cases = {
        "get_camera_4_e15_a90_s360": dict(num_frames=4, elevation=15, azimuth_start=90, azimuth_span=360),
        "get_camera_4_default": dict(num_frames=4),
        "get_camera_8_e30_a45_s180_opengl": dict(num_frames=8, elevation=30, azimuth_start=45, azimuth_span=180,
                                                 blender_coord=False),
        "get_camera_1_e0": dict(num_frames=1, elevation=0),
    }
    for name, kwargs in cases.items():
        out = get_camera(**kwargs)
        assert isinstance(out, Tensor) and out.asnumpy().dtype == np.float32
        assert_close(out, cam[name], 1e-6, name)
        assert_close(get_camera_np(**kwargs), cam[name], 1e-6, name + "_np")
    rows = [get_camera(n).shape[0] for n in range(1, 33)]
    np.testing.assert_array_equal(rows, cam["get_camera_rows_for_num_frames_1_32"])
    extra = get_camera(4, extra_view=True).asnumpy()
    assert extra.shape == (5, 16) and not extra[-1].any()
    np.testing.assert_allclose(extra[:4], get_camera(4).asnumpy(), rtol=1e-6, atol=1e-7)


def test_camera_matrices(cam):
    c2w = np.stack([create_camera_to_world_matrix(e, a) for e, a in cam["c2w_elev_azim"]])
    assert_close(c2w, cam["c2w_opengl"], 1e-12, "c2w_opengl")
    assert_close(convert_opengl_to_blender(c2w), cam["c2w_blender"], 1e-12, "c2w_blender")
    batch = Tensor(cam["normalize_in"])
    assert_close(convert_opengl_to_blender(batch), cam["convert_opengl_to_blender_torch"], 1e-6, "blender_ms")
    assert_close(convert_opengl_to_blender(Tensor(cam["normalize_in"][1])),
                 cam["convert_opengl_to_blender_torch"][1], 1e-6, "blender_ms_single")


def test_normalize_camera_does_not_mutate(cam):
    # The original writes the result into its argument (normalize_mutates_input);
    # the port returns a new array and leaves the input alone.
    assert bool(cam["normalize_mutates_input"])
    data = cam["normalize_in"]
    as_np = data.astype(np.float64)
    out = normalize_camera(as_np)
    assert_close(out, cam["normalize_out_numpy"], 1e-12, "normalize_np")
    np.testing.assert_array_equal(as_np, data.astype(np.float64))
    as_ms = Tensor(data)
    assert_close(normalize_camera(as_ms), cam["normalize_out_torch"], 1e-6, "normalize_ms")
    np.testing.assert_array_equal(as_ms.asnumpy(), data)
    norms = np.linalg.norm(out.reshape(-1, 4, 4)[:, :3, 3], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-7)

"""Random multiview camera data module, ray/camera helpers and the shipped MVDream configs."""
import math
from pathlib import Path

import numpy as np
import pytest
from mindspore import Tensor

import threestudio
from threestudio.data.uncond_multiview import RandomMultiviewCameraDataModule, RandomMultiviewCameraDataModuleConfig
from threestudio.utils.config import ConfigError, load_config, parse_structured
from threestudio.utils.ops import get_mvp_matrix, get_projection_matrix, get_ray_directions, get_rays

CONFIGS = Path(__file__).resolve().parents[1] / "MVDream-threestudio" / "configs"

# The data section of configs/mvdream-sd21.yaml, at small resolutions to keep the tests fast.
MVDREAM_DATA = dict(
    batch_size=[8, 4], n_view=4, width=[16, 32], height=[16, 32], resolution_milestones=[5000],
    camera_distance_range=[0.8, 1.0], fovy_range=[15, 60], elevation_range=[0, 30],
    camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0, n_val_views=4,
    eval_camera_distance=3.0, eval_fovy_deg=40.0, eval_height=24, eval_width=32,
)


def make_dm(seed=0, **overrides):
    dm = threestudio.find("random-multiview-camera-datamodule")({**MVDREAM_DATA, **overrides}, seed=seed)
    dm.setup()
    return dm


def np_batch(batch):
    return {k: (v.asnumpy() if isinstance(v, Tensor) else v) for k, v in batch.items()}


@pytest.fixture(scope="module")
def many_batches():
    dm = make_dm(seed=1)
    return [np_batch(dm.train_dataset.collate_next(step)) for step in range(400)]


def cat(batches, key):
    return np.concatenate([b[key] for b in batches])


def test_registered_under_both_names():
    assert threestudio.find("mvdream-random-multiview-camera-datamodule") is RandomMultiviewCameraDataModule
    assert threestudio.find("random-multiview-camera-datamodule") is RandomMultiviewCameraDataModule


def test_batch_keys_shapes_dtypes(many_batches):
    b = many_batches[0]
    for key in ("rays_o", "rays_d"):
        assert b[key].shape == (8, 16, 16, 3) and b[key].dtype == np.float32
    for key in ("c2w", "mvp_mtx", "proj_mtx"):
        assert b[key].shape == (8, 4, 4)
    for key in ("camera_positions", "light_positions"):
        assert b[key].shape == (8, 3)
    for key in ("elevation", "azimuth", "camera_distances", "fovy"):
        assert b[key].shape == (8,)
    assert (b["height"], b["width"]) == (16, 16)


def test_camera_statistics_match_config(many_batches):
    elev, fovy = cat(many_batches, "elevation"), cat(many_batches, "fovy")
    dist, azim = cat(many_batches, "camera_distances"), cat(many_batches, "azimuth")
    n = len(elev)
    assert n == 3200
    # shared per object (groups of n_view = 4 consecutive views)
    for x in (elev, fovy, dist):
        g = x.reshape(-1, 4)
        np.testing.assert_array_equal(g, np.repeat(g[:, :1], 4, axis=1))
    # azimuths: random start in [-180, -90), then +90 degree steps covering 360
    g = azim.reshape(-1, 4)
    np.testing.assert_allclose(np.diff(g, axis=1), 90.0, atol=1e-4)
    assert g[:, 0].min() >= -180 and g[:, 0].max() < -90
    assert abs(g[:, 0].mean() - (-135.0)) < 3.0  # uniform start (800 objects: std of mean ~0.9)
    # fovy uniform in [15, 60] (no zoom)
    f = fovy[::4]
    assert f.min() >= 15 and f.max() <= 60 and abs(f.mean() - 37.5) < 2.0
    # relative radius: distance * tan(fovy / 2) uniform in [0.8, 1.0]
    rel = (dist * np.tan(np.deg2rad(fovy) / 2))[::4]
    assert rel.min() >= 0.8 - 1e-5 and rel.max() <= 1.0 + 1e-5 and abs(rel.mean() - 0.9) < 0.01
    # elevation: half uniform in [0, 30] degrees, half arcsin(U[0, 30/90]) (MVDream's sphere branch)
    e = elev[::4]
    assert e.min() >= 0 and e.max() <= 30 + 1e-4
    a = 30 / 90
    sphere_mean = math.degrees((a * math.asin(a) + math.sqrt(1 - a * a) - 1) / a)
    assert abs(e.mean() - (0.5 * 15 + 0.5 * sphere_mean)) < 1.0
    high = math.degrees(math.asin(a))  # the sphere branch never goes above asin(1/3) = 19.47 deg
    assert abs((e > high).mean() - 0.5 * (30 - high) / 30) < 0.05


def test_c2w_looks_at_origin_and_rays(many_batches):
    for b in many_batches[:5]:
        c2w, pos = b["c2w"], b["camera_positions"]
        rot = c2w[:, :3, :3]
        np.testing.assert_allclose(rot.transpose(0, 2, 1) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
        np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
        np.testing.assert_allclose(c2w[:, 3], np.broadcast_to([0, 0, 0, 1], (8, 4)))
        np.testing.assert_allclose(c2w[:, :3, 3], pos, atol=1e-6)
        # back axis points from the origin to the camera; right axis is horizontal; up axis upwards
        np.testing.assert_allclose(c2w[:, :3, 2], pos / np.linalg.norm(pos, axis=1, keepdims=True), atol=1e-5)
        np.testing.assert_allclose(c2w[:, 2, 0], 0.0, atol=1e-6)
        assert (c2w[:, 2, 1] > 0).all()
        # position from spherical coordinates (x back, y right, z up; azimuth from +x to +y)
        el, az, d = np.deg2rad(b["elevation"]), np.deg2rad(b["azimuth"]), b["camera_distances"]
        expect = np.stack([d * np.cos(el) * np.cos(az), d * np.cos(el) * np.sin(az), d * np.sin(el)], -1)
        np.testing.assert_allclose(pos, expect, rtol=1e-5, atol=1e-5)
        # rays start at the camera, have unit length; the mean of the 4 central rays is the view axis
        np.testing.assert_allclose(b["rays_o"], np.broadcast_to(pos[:, None, None], b["rays_o"].shape), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(b["rays_d"], axis=-1), 1.0, atol=1e-5)
        center = b["rays_d"][:, 7:9, 7:9].sum(axis=(1, 2))
        center /= np.linalg.norm(center, axis=-1, keepdims=True)
        np.testing.assert_allclose(center, -c2w[:, :3, 2], atol=1e-5)
        # vertical field of view: the top-row ray is (H/2 - 0.5) / focal above the axis
        cam = np.einsum("bji,bhwj->bhwi", rot, b["rays_d"])  # to camera space
        focal = 0.5 * 16 / np.tan(np.deg2rad(b["fovy"]) / 2)
        np.testing.assert_allclose(cam[:, 0, 8, 1] / -cam[:, 0, 8, 2], 7.5 / focal, rtol=1e-4)
        np.testing.assert_allclose(cam[:, 8, 0, 0] / -cam[:, 8, 0, 2], -7.5 / focal, rtol=1e-4)
        # mvp maps the origin to the image centre and the camera-space depth to clip w
        clip = b["mvp_mtx"] @ np.array([0, 0, 0, 1.0], np.float32)
        np.testing.assert_allclose(clip[:, :2] / clip[:, 3:], 0.0, atol=1e-5)
        np.testing.assert_allclose(clip[:, 3], np.linalg.norm(pos, axis=1), rtol=1e-5)
        # dreamfusion lights: along the camera direction perturbed, at light_distance_range
        ld = np.linalg.norm(b["light_positions"], axis=-1)
        assert ld.min() >= 0.8 - 1e-5 and ld.max() <= 1.5 + 1e-5


def test_perturbations_shared_within_object():
    dm = make_dm(camera_perturb=0.1, center_perturb=0.2, up_perturb=0.02, light_position_perturb=0.0)
    b = np_batch(dm.train_dataset.collate())
    el, az, d = np.deg2rad(b["elevation"]), np.deg2rad(b["azimuth"]), b["camera_distances"]
    ideal = np.stack([d * np.cos(el) * np.cos(az), d * np.cos(el) * np.sin(az), d * np.sin(el)], -1)
    delta = (b["camera_positions"] - ideal).reshape(2, 4, 3)
    np.testing.assert_allclose(delta, np.repeat(delta[:, :1], 4, axis=1), atol=1e-5)
    assert np.abs(delta).max() <= 0.1 + 1e-5 and np.abs(delta).max() > 1e-3
    # with a perturbed centre the cameras no longer look at the origin
    back = b["c2w"][:, :3, 2]
    unit = b["camera_positions"] / np.linalg.norm(b["camera_positions"], axis=1, keepdims=True)
    assert np.abs(back - unit).max() > 1e-3
    # light_position_perturb = 0: the light is on the camera's ray from the origin
    light_dir = b["light_positions"] / np.linalg.norm(b["light_positions"], axis=1, keepdims=True)
    np.testing.assert_allclose(light_dir, unit, atol=1e-5)


def test_zoom_scales_fovy_after_distance():
    dm = make_dm(zoom_range=[0.5, 0.5])
    b = np_batch(dm.train_dataset.collate())
    assert b["fovy"].max() <= 30 + 1e-4
    rel = b["camera_distances"] * np.tan(np.deg2rad(b["fovy"] / 0.5) / 2)  # radius from the unzoomed fovy
    assert rel.min() >= 0.8 - 1e-5 and rel.max() <= 1.0 + 1e-5


def test_magic3d_lights_above_camera_horizon():
    dm = make_dm(light_sample_strategy="magic3d")
    b = np_batch(dm.train_dataset.collate())
    unit = b["camera_positions"] / np.linalg.norm(b["camera_positions"], axis=1, keepdims=True)
    ld = np.linalg.norm(b["light_positions"], axis=1)
    cos = (b["light_positions"] * unit).sum(1) / ld  # sin of the light elevation in the camera frame
    assert cos.min() >= math.sin(math.pi / 6) - 1e-5
    assert ld.min() >= 0.8 - 1e-5 and ld.max() <= 1.5 + 1e-5


def test_resolution_and_batch_size_switch_at_milestone():
    dm = make_dm()
    ds = dm.train_dataset
    b = ds.collate_next(4999)
    assert b["rays_o"].shape == (8, 16, 16, 3) and (b["height"], b["width"]) == (16, 16)
    b = ds.collate_next(5000)
    assert b["rays_o"].shape == (4, 32, 32, 3) and (b["height"], b["width"]) == (32, 32)
    dm.do_update_step(0, 10)  # the data module forwards the step to its training set
    assert (ds.batch_size, ds.height, ds.width) == (8, 16, 16)
    dm.update_step(0, 7000)
    assert (ds.batch_size, ds.height, ds.width) == (4, 32, 32)


def test_progressive_views():
    dm = make_dm(progressive_until=100, eval_elevation_deg=15.0)
    ds = dm.train_dataset
    b = np_batch(ds.collate_next(0))  # starts at the eval view
    # (MVDream's sphere branch maps a [15, 15] range to arcsin(15 / 90) = 9.59 degrees)
    assert np.allclose(b["elevation"], 15.0, atol=1e-4) or np.allclose(
        b["elevation"], math.degrees(math.asin(15 / 90)), atol=1e-4)
    np.testing.assert_allclose(b["azimuth"], 0.0, atol=1e-4)
    ds.update_step(0, 50)
    np.testing.assert_allclose(ds.elevation_range, [15 * 51 / 101, 15 * 51 / 101 + 30 * 50 / 101])
    np.testing.assert_allclose(ds.azimuth_range, [-180 * 50 / 101, 180 * 50 / 101])
    ds.update_step(0, 0)
    dm0 = make_dm()  # progressive_until = 0: full ranges from step 0
    b = np_batch(dm0.train_dataset.collate_next(0))
    np.testing.assert_allclose(np.diff(b["azimuth"].reshape(2, 4), axis=1), 90.0, atol=1e-4)


def test_batch_size_not_divisible_by_n_view():
    with pytest.raises(ConfigError) as err:
        make_dm(batch_size=6, width=16, height=16, resolution_milestones=[])
    assert str(err.value) == "batch_size 6 is not divisible by n_view 4; use a multiple of 4"
    with pytest.raises(ConfigError, match="batch_size 6 is not divisible by n_view 4"):
        make_dm(batch_size=[8, 6])
    with pytest.raises(ConfigError, match="len\\(resolution_milestones\\) \\+ 1 = 2"):
        make_dm(batch_size=[8, 4, 4])
    with pytest.raises(ConfigError, match="unknown light_sample_strategy 'sun'"):
        make_dm(light_sample_strategy="sun")
    with pytest.raises(ConfigError, match="unknown config key 'nview'"):
        make_dm(nview=4)


def test_val_and_test_orbits():
    dm = make_dm()
    test = dm.test_dataset
    assert len(test) == 120
    batches = [np_batch(b) for b in test]
    assert len(batches) == 120
    b = batches[37]
    assert b["rays_o"].shape == (1, 24, 32, 3) and (b["height"], b["width"]) == (24, 32)
    assert int(b["index"][0]) == 37
    pos = cat(batches, "camera_positions")
    np.testing.assert_allclose(np.linalg.norm(pos, axis=1), 3.0, rtol=1e-6)
    np.testing.assert_allclose(cat(batches, "azimuth"), np.linspace(0, 360, 120), atol=1e-4)
    np.testing.assert_allclose(cat(batches, "elevation"), 15.0)  # threestudio's eval_elevation_deg default
    np.testing.assert_allclose(cat(batches, "fovy"), 40.0)
    np.testing.assert_allclose(cat(batches, "light_positions"), pos)
    np.testing.assert_allclose(np.rad2deg(np.arcsin(pos[:, 2] / 3.0)), 15.0, atol=1e-4)
    # proj uses the eval aspect ratio
    np.testing.assert_allclose(b["proj_mtx"][0, 0, 0] * 32 / 24, -b["proj_mtx"][0, 1, 1], rtol=1e-6)
    val = np_batch(dm.val_dataset.get_batch(range(4)))
    assert len(dm.val_dataset) == 4
    np.testing.assert_allclose(val["azimuth"], [0, 90, 180, 270], atol=1e-5)
    np.testing.assert_array_equal(val["index"], [0, 1, 2, 3])
    with pytest.raises(IndexError):
        dm.val_dataset[4]


def test_rng_state_resumes_exactly():
    dm = make_dm(seed=5, camera_perturb=0.1, center_perturb=0.2, up_perturb=0.02)
    ds = dm.train_dataset
    ds.collate_next(0)
    state = dm.get_rng_state()
    first = [np_batch(ds.collate_next(s)) for s in (1, 2, 5000)]
    dm.set_rng_state(state)
    again = [np_batch(ds.collate_next(s)) for s in (1, 2, 5000)]
    # a fresh data module restored from the saved state replays the same batches too
    dm2 = make_dm(seed=123, camera_perturb=0.1, center_perturb=0.2, up_perturb=0.02)
    dm2.set_rng_state(state)
    fresh = [np_batch(dm2.train_dataset.collate_next(s)) for s in (1, 2, 5000)]
    for a, b, c in zip(first, again, fresh):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], c[k])
    # the seed comes from the data config first, else from the experiment seed
    same = [np_batch(make_dm(seed=9).train_dataset.collate())["azimuth"] for _ in range(2)]
    np.testing.assert_array_equal(*same)
    assert not np.array_equal(same[0], np_batch(make_dm(seed=10).train_dataset.collate())["azimuth"])
    with_cfg_seed = threestudio.find("random-multiview-camera-datamodule")({**MVDREAM_DATA, "seed": 9}, seed=10)
    assert with_cfg_seed.seed == 9


def test_ops_with_tensors_and_numpy():
    d = get_ray_directions(2, 4, 2.0)
    np.testing.assert_allclose(d[0, 0], [(0.5 - 2) / 2, -(0.5 - 1) / 2, -1])
    d2 = get_ray_directions(2, 4, (2.0, 4.0), principal=(1.0, 1.0), use_pixel_centers=False)
    np.testing.assert_allclose(d2[1, 3], [(3 - 1) / 2, -(1 - 1) / 4, -1])
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, 3] = [1, 2, 3]
    o, r = get_rays(Tensor(d), Tensor(c2w))
    assert isinstance(o, Tensor) and o.shape == (8, 3)
    np.testing.assert_allclose(o.asnumpy(), np.broadcast_to([1, 2, 3], (8, 3)))
    np.testing.assert_allclose(r.asnumpy(), d.reshape(-1, 3) / np.linalg.norm(d.reshape(-1, 3), axis=1, keepdims=True),
                               rtol=1e-6)
    o, r = get_rays(d, c2w, keepdim=True, normalize=False)
    assert o.shape == (2, 4, 3)
    np.testing.assert_allclose(r, d)
    o, r = get_rays(d, np.stack([c2w, c2w]), keepdim=True)
    assert r.shape == (2, 2, 4, 3)
    proj = get_projection_matrix(Tensor(np.float32([math.pi / 2])), 2.0, 0.1, 1000.0).asnumpy()[0]
    np.testing.assert_allclose(proj[0, 0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(proj[1, 1], -1.0, rtol=1e-6)
    np.testing.assert_allclose(proj[3], [0, 0, -1, 0])
    mvp = get_mvp_matrix(c2w[None], np.eye(4, dtype=np.float32)[None])
    np.testing.assert_allclose(mvp[0], np.linalg.inv(c2w), atol=1e-6)


@pytest.mark.parametrize("name", ["mvdream-sd21.yaml", "mvdream-sd21-shading.yaml"])
def test_shipped_configs_load_and_parse(name):
    cfg = load_config(str(CONFIGS / name), cli_args=["system.prompt_processor.prompt=a red car"])
    assert cfg.tag == "a_red_car" and cfg.seed == 0
    assert cfg.data_type == "random-multiview-camera-datamodule"
    assert cfg.system_type == "mvdream-system"
    assert cfg.system.guidance_type == "multiview-diffusion-guidance"
    assert cfg.system.guidance.ckpt_path is None and cfg.system.guidance.model_name == "sd-v2.1-base-4view"
    assert cfg.system.guidance.recon_std_rescale == 0.5
    assert list(cfg.system.guidance.min_step_percent) == [0, 0.98, 0.02, 8000]
    assert cfg.system.renderer.radius == cfg.system.geometry.radius == 1.0
    assert cfg.checkpoint.every_n_train_steps == cfg.trainer.max_steps == 10000
    data = parse_structured(RandomMultiviewCameraDataModuleConfig, cfg.data)  # no unknown keys
    assert (data.batch_size, data.width, data.height) == ([8, 4], [64, 256], [64, 256])
    assert data.n_view == 4 and data.relative_radius and tuple(data.elevation_range) == (0, 30)
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed)
    assert dm.seed == 0 and dm.cfg.eval_camera_distance == 3.0
    shading = name.endswith("shading.yaml")
    assert cfg.system.material_type == ("diffuse-with-point-light-material" if shading else "no-material")
    assert cfg.system.geometry.normal_type == ("analytic" if shading else None)
    assert (list(cfg.system.loss.lambda_orient) if shading else cfg.system.loss.lambda_orient) == \
        ([0, 10.0, 1000.0, 5000] if shading else 0.0)

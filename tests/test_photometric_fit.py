"""Photometric fit: the real NeRF stack learns a known object from 8 views, checked on 4 others.

implicit-volume (reduced hash grid) + no-material + solid-color-background + nerf-volume-renderer
(occupancy grid updated through ``do_update_step`` as in training), optimised with the system's
AdamW (``parse_optimizer``, MVDream's per-module learning rates) on an MSE loss. The targets are
an analytic two-coloured sphere, ray-traced exactly in NumPy (4x4 supersampled, so silhouettes
are anti-aliased as a volume renders them). Must reach >= 25 dB PSNR on held-out 64x64 views.
"""
import pytest
import os
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

import threestudio
from threestudio.systems.optim import parse_optimizer
from threestudio.utils.autodiff import no_grad
from threestudio.utils.base import Updateable
from threestudio.utils.ops import get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian

pytestmark = [pytest.mark.slow]

SIZE, SUPERSAMPLE, FOVY_DEG, DISTANCE = 64, 4, 40.0, 2.0
SPHERE_CENTER, SPHERE_RADIUS = np.array([0.08, -0.05, 0.04]), 0.36
COLOR_POS_X, COLOR_NEG_X = np.array([0.85, 0.25, 0.2]), np.array([0.2, 0.35, 0.85])
BACKGROUND = (1.0, 1.0, 1.0)

GEOMETRY_CFG = {
    "radius": 1.0,
    "normal_type": None,
    "density_bias": "blob_magic3d",
    "density_activation": "softplus",
    "density_blob_scale": 10.0,
    "density_blob_std": 0.5,
    # reduced grid for speed (the default is 16 levels, 2^19 entries)
    "pos_encoding_config": {"otype": "HashGrid", "n_levels": 10, "n_features_per_level": 2,
                            "log2_hashmap_size": 16, "base_resolution": 16, "per_level_scale": 1.447269237440378},
}
OPTIMIZER_CFG = {  # configs/mvdream-sd21.yaml
    "name": "AdamW",
    "args": {"betas": [0.9, 0.99], "eps": 1e-15},
    "params": {"geometry.encoding": {"lr": 0.01}, "geometry.density_network": {"lr": 0.001},
               "geometry.feature_network": {"lr": 0.001}, "background": {"lr": 0.001}},
}
# 200 steps: 29.2 dB held-out (300 steps before, for CI time; 200 measured alone on one core, 142 s)
STEPS = int(os.environ.get("FIT_STEPS", 200))
RAYS_PER_STEP = int(os.environ.get("FIT_RAYS", 4096))
SAMPLES_PER_RAY = int(os.environ.get("FIT_SPP", 256))


def cameras(elevations_deg, azimuths_deg, size):
    """(rays_o, rays_d) [B, size, size, 3] of pinhole cameras looking at the origin."""
    elev, azim = np.deg2rad(np.asarray(elevations_deg, float)), np.deg2rad(np.asarray(azimuths_deg, float))
    positions = spherical_to_cartesian(elev, azim, np.full(elev.shape, DISTANCE)).astype(np.float32)
    c2w = look_at_c2w(positions, np.zeros_like(positions), np.float32([0, 0, 1]))
    focal = 0.5 * size / np.tan(0.5 * np.deg2rad(FOVY_DEG))
    return get_rays(get_ray_directions(size, size, focal), c2w, keepdim=True)


def render_sphere(rays_o, rays_d):
    """Exact ray/sphere intersection; albedo by the side of the x = centre_x plane, white outside."""
    oc = rays_o.astype(np.float64) - SPHERE_CENTER
    d = rays_d.astype(np.float64)
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - SPHERE_RADIUS ** 2)
    hit = disc > 0
    t = -b - np.sqrt(np.where(hit, disc, 0.0))
    local = oc + d * t[..., None]
    color = np.where(local[..., :1] > 0, COLOR_POS_X, COLOR_NEG_X)
    rgb = np.where(hit[..., None], color, np.asarray(BACKGROUND))
    return np.concatenate([rgb, hit[..., None]], -1).astype(np.float32)


def target_images(elevations_deg, azimuths_deg, render=render_sphere):
    """Anti-aliased targets [B, H, W, 3] and object coverage [B, H, W]: ``render`` (rays_o,
    rays_d -> [..., 4] rgb + hit) at SUPERSAMPLE x the size, averaged over the blocks."""
    s = SUPERSAMPLE
    rays_o, rays_d = cameras(elevations_deg, azimuths_deg, SIZE * s)
    hi = render(rays_o, rays_d).reshape(len(azimuths_deg), SIZE, s, SIZE, s, 4).mean((2, 4))
    return hi[..., :3], hi[..., 3]


class Scene(nn.Cell, Updateable):
    """What the optimizer config addresses (``geometry.encoding``, ``background``, ...), as a system."""

    def __init__(self, geometry_cfg=None, material_type="no-material", material_cfg=None,
                 samples_per_ray=SAMPLES_PER_RAY):
        super().__init__()
        self.geometry = threestudio.find("implicit-volume")(geometry_cfg or GEOMETRY_CFG)
        self.material = threestudio.find(material_type)(material_cfg or {"n_output_dims": 3, "color_activation": "sigmoid"})
        self.background = threestudio.find("solid-color-background")({"color": BACKGROUND})
        self.renderer = threestudio.find("nerf-volume-renderer")(
            {"radius": 1.0, "num_samples_per_ray": samples_per_ray}, self.geometry, self.material, self.background)


def psnr(pred, target):
    return float(-10.0 * np.log10(np.mean((pred - target) ** 2)))


TRAIN_VIEWS = ([0, 30] * 4, np.arange(8) * 45.0)  # (elevations, azimuths) in degrees
TEST_VIEWS = ([15, 10, 20, 5], np.arange(4) * 90.0 + 22.5)


def fit_and_evaluate(make_scene=Scene, render=render_sphere, optimizer_cfg=OPTIMIZER_CFG, seed=0, steps=STEPS,
                     train_views=TRAIN_VIEWS, test_views=TEST_VIEWS, log_every=50, rays=RAYS_PER_STEP):
    """Fit ``make_scene()``, built after seeding, to the targets of ``render`` on the training
    views, then render the held-out views: PSNR (all, per view, object pixels), seconds per step."""
    np.random.seed(seed)  # the renderer's stratified offsets and the grid's cell jitter use np.random
    ms.set_seed(seed)
    rng = np.random.default_rng(seed)
    train_o, train_d = cameras(*train_views, SIZE)
    train_o, train_d = train_o.reshape(-1, 3), train_d.reshape(-1, 3)
    train_rgb = target_images(*train_views, render=render)[0].reshape(-1, 3)

    scene = make_scene()
    scene.set_train(True)
    optimizer, params = parse_optimizer(optimizer_cfg, scene)
    light = Tensor(np.zeros((1, 3), np.float32))

    def loss_fn(rays_o, rays_d, rgb):
        out = scene.renderer(rays_o, rays_d, light)
        return ((out["comp_rgb"] - rgb) ** 2).mean()

    grad_fn = ms.value_and_grad(loss_fn, None, params)
    t0 = time.time()
    for step in range(steps):
        scene.do_update_step(0, step)  # occupancy grid EMA updates every 16 steps, as in training
        idx = rng.choice(train_rgb.shape[0], rays, replace=False)
        loss, grads = grad_fn(Tensor(train_o[idx][None, None]), Tensor(train_d[idx][None, None]),
                              Tensor(train_rgb[idx][None, None]))
        optimizer(grads)
        if log_every and step % log_every == 0:
            kept = scene.renderer.stats["n_samples"] / rays
            occupied = int(scene.renderer.estimator.binaries.asnumpy().sum())
            print(f"step {step}: loss {float(loss.asnumpy()):.5f}, {kept:.1f} samples/ray, "
                  f"{occupied} occupied cells, {time.time() - t0:.1f} s", flush=True)
    fit_s = time.time() - t0

    scene.set_train(False)
    n_test = len(test_views[1])
    test_o, test_d = cameras(*test_views, SIZE)
    with no_grad():
        pred = scene.renderer(Tensor(test_o), Tensor(test_d), Tensor(np.zeros((n_test, 3), np.float32)))["comp_rgb"]
    pred = pred.asnumpy()
    test_rgb, coverage = target_images(*test_views, render=render)
    views = [psnr(p, t) for p, t in zip(pred, test_rgb)]
    # the white background is most of each image: also report the object's pixels alone
    on_object = coverage > 0
    return {"psnr": psnr(pred, test_rgb), "views": views, "object_psnr": psnr(pred[on_object], test_rgb[on_object]),
            "object_fraction": float(on_object.mean()), "fit_s": fit_s, "step_s": fit_s / max(steps, 1)}


def test_photometric_fit_held_out_psnr():
    r = fit_and_evaluate()
    print(f"held-out PSNR {r['psnr']:.2f} dB (views {', '.join(f'{v:.2f}' for v in r['views'])}; "
          f"object pixels ({100 * r['object_fraction']:.0f}%) alone {r['object_psnr']:.2f} dB), "
          f"{STEPS} steps in {r['fit_s']:.1f} s")
    assert r["psnr"] >= 25.0, f"held-out PSNR {r['psnr']:.2f} dB < 25 dB"

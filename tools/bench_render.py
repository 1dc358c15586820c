"""Benchmark the nerf-volume-renderer (occupancy grid + packed compositing), forward+backward.

    PYTHONPATH=MVDream-threestudio python tools/bench_render.py [--geometry auto|builtin] [--iters 3]

Default renderer config (512 samples per ray, 32^3 grid, alpha pruning). The grid is warmed
with a few updates on the geometry's density. Uses ``threestudio.find("implicit-volume")``
(MVDream's blob-initialised config) when it is registered, else a built-in blob field.
Reports per setting: seconds per forward+backward, time in the NumPy sampler, mean samples
per ray (marched / in occupied cells / kept), rays/s, samples/s and the process peak RSS.
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MVDream-threestudio"))

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import Parameter, Tensor, nn, ops  # noqa: E402

import threestudio  # noqa: E402

# MVDream-threestudio's geometry settings (configs/mvdream-sd21.yaml), used when available
IMPLICIT_VOLUME_CFG = {
    "radius": 1.0,
    "normal_type": "analytic",
    "density_bias": "blob_magic3d",
    "density_activation": "softplus",
    "density_blob_scale": 10.0,
    "density_blob_std": 0.5,
}


class BlobField(nn.Cell):
    """Built-in stand-in geometry: MVDream's blob density plus a learnable sinusoidal term.

    density = softplus(10 * (1 - |x| / 0.5) + a . sin(B x)), features = W x + b.
    Cheap per point, so the numbers isolate the renderer's own cost.
    """

    def __init__(self, n_freq=8, n_feat=3):
        super().__init__()
        rng = np.random.default_rng(0)
        self.cfg = SimpleNamespace(radius=1.0)
        self.bbox = Tensor(np.array([[-1.0] * 3, [1.0] * 3], np.float32))
        self.freqs = Tensor(rng.normal(0, 4, (3, n_freq)).astype(np.float32))
        self.amp = Parameter(Tensor(rng.normal(0, 0.3, n_freq).astype(np.float32)), name="amp")
        self.w = Parameter(Tensor(rng.normal(0, 0.5, (3, n_feat)).astype(np.float32)), name="w")
        self.b = Parameter(Tensor(np.zeros(n_feat, np.float32)), name="b")

    def forward_density(self, points):
        blob = 10.0 * (1.0 - ops.norm(points, dim=-1, keepdim=True) / 0.5)
        raw = blob + (ops.sin(ops.matmul(points, self.freqs)) * self.amp).sum(-1, keepdims=True)
        return ops.softplus(raw)

    def construct(self, points, output_normal=False):
        if output_normal:
            raise NotImplementedError("built-in field has no normals")
        return {"density": self.forward_density(points), "features": ops.matmul(points, self.w) + self.b}


class SigmoidMaterial(nn.Cell):
    requires_normal = False

    def construct(self, features, **kwargs):
        return ops.sigmoid(features)


class ConstantBackground(nn.Cell):
    def __init__(self):
        super().__init__()
        self.color = Parameter(Tensor(np.array([0.5, 0.5, 0.5], np.float32)), name="color")

    def construct(self, dirs):
        return ops.zeros_like(dirs) + self.color


def build_scene(which: str):
    if which in ("auto", "implicit-volume"):
        try:
            geometry = threestudio.find("implicit-volume")(IMPLICIT_VOLUME_CFG)
            try:
                material = threestudio.find("no-material")({"n_output_dims": 3, "color_activation": "sigmoid"})
            except KeyError:
                material = SigmoidMaterial()
            return "implicit-volume (threestudio, MVDream config)", geometry, material, ConstantBackground()
        except KeyError:
            if which == "implicit-volume":
                raise
    return "built-in blob field (implicit-volume not registered)", BlobField(), SigmoidMaterial(), ConstantBackground()


def orbit_rays(n_views, size, distance=2.5, fov_deg=40.0):
    focal = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    cam = np.stack([(j - size / 2) / focal, -(i - size / 2) / focal, -np.ones_like(i)], -1)
    rays_o, rays_d = [], []
    for azim in np.linspace(0, 2 * np.pi, n_views, endpoint=False):
        eye = distance * np.array([np.cos(0.3) * np.cos(azim), np.cos(0.3) * np.sin(azim), np.sin(0.3)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        d = cam @ np.stack([right, np.cross(right, fwd), -fwd])
        rays_d.append(d / np.linalg.norm(d, axis=-1, keepdims=True))
        rays_o.append(np.broadcast_to(eye, d.shape))
    return (Tensor(np.stack(rays_o).astype(np.float32)), Tensor(np.stack(rays_d).astype(np.float32)),
            Tensor(np.zeros((n_views, 3), np.float32)))


def bench(renderer, params, n_views, size, iters):
    rays = orbit_rays(n_views, size)
    sampler, sample_time = renderer.estimator.sampling, []

    def timed_sampling(*args, **kwargs):
        t = time.perf_counter()
        res = sampler(*args, **kwargs)
        sample_time.append(time.perf_counter() - t)
        return res

    renderer.estimator.sampling = timed_sampling

    def loss():
        out = renderer(*rays)
        return out["comp_rgb"].mean() + 0.01 * out["opacity"].mean()

    grad_fn = ms.value_and_grad(loss, None, params)
    times, stats = [], []
    for it in range(iters + 1):  # first iteration is warm-up
        sample_time.clear()
        t = time.perf_counter()
        _, grads = grad_fn()
        _ = [g.asnumpy() for g in grads]  # make sure backward finished
        if it:
            times.append(time.perf_counter() - t)
            stats.append((dict(renderer.stats), sum(sample_time)))
    renderer.estimator.sampling = sampler
    n_rays = n_views * size * size
    sec = float(np.median(times))
    per_ray = {k: float(np.mean([s[k] for s, _ in stats])) / n_rays for k in ("n_marched", "n_grid", "n_samples")}
    return {
        "views": n_views, "resolution": size, "rays": n_rays,
        "fwd_bwd_s": round(sec, 3),
        "sampler_s": round(float(np.median([t for _, t in stats])), 3),
        "samples_per_ray_marched": round(per_ray["n_marched"], 1),
        "samples_per_ray_in_grid": round(per_ray["n_grid"], 1),
        "samples_per_ray_kept": round(per_ray["n_samples"], 2),
        "rays_per_s": round(n_rays / sec),
        "kept_samples_per_s": round(per_ray["n_samples"] * n_rays / sec),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometry", default="auto", choices=["auto", "builtin", "implicit-volume"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--settings", default="8x64,4x256", help="comma list of VIEWSxSIZE")
    args = parser.parse_args()
    np.random.seed(0)

    name, geometry, material, background = build_scene(args.geometry)
    print(f"geometry: {name}")
    renderer = threestudio.find("nerf-volume-renderer")({}, geometry, material, background)
    for cell in (renderer, geometry, material, background):
        cell.set_train(True)
    for k in range(4):  # warm-up updates: every cell evaluated each time
        renderer.update_step(0, 16 * k)
    print(f"occupied cells: {int(renderer.estimator.binaries.asnumpy().sum())} / 32768")
    params = geometry.trainable_params() + material.trainable_params() + background.trainable_params()
    for setting in args.settings.split(","):
        n_views, size = (int(v) for v in setting.split("x"))
        print(json.dumps(bench(renderer, params, n_views, size, args.iters)), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark a training render of MVDream's NeRF (forward + backward), per hash grid backend.

    python tools/bench_render.py [--config MVDream-threestudio/configs/mvdream-sd21.yaml]
                                 [--backend all|cpp|ops] [--iters 3]

Builds geometry, material, background and renderer exactly as ``system.*`` in the config says
(default: implicit-volume with the 16-level 2^19 hash grid, no-material,
neural-environment-map-background, nerf-volume-renderer with 512 samples per ray) and renders
one training batch of the config's camera datamodule for each resolution stage (64x64 x 8 views,
256x256 x 4 views), after warming the occupancy grid up on the initial density blob.
Prints per stage: seconds per forward+backward, time in the NumPy sampler, mean samples per ray
(marched / in occupied cells / kept after alpha and transmittance pruning), rays/s, kept
samples/s and the peak RSS. With ``--backend all`` every available backend runs in its own
process, so that each peak RSS is its own.

Memory: the training render keeps every sample's activations for the backward pass, about
2 KB per kept sample with the C++ grid (~8 KB with the pure-ops grid). The initial blob keeps
~35-40 samples per ray, so the 256x256 x 4 stage (~10M samples) needs ~20 GB; on a small
machine use e.g. ``--views 8,1`` (one 256x256 view) and scale.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MVDream"), str(ROOT / "MVDream-threestudio")]

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402

import threestudio  # noqa: E402
from threestudio.models import hashgrid  # noqa: E402
from threestudio.utils.config import load_config  # noqa: E402

DEFAULT_CONFIG = ROOT / "MVDream-threestudio" / "configs" / "mvdream-sd21.yaml"


def build_scene(cfg, backend: str):
    s = cfg.system
    geometry = threestudio.find(s.geometry_type)(s.geometry)
    geometry.encoding.encoding.set_implementation(backend)
    material = threestudio.find(s.material_type)(s.material)
    background = threestudio.find(s.background_type)(s.background)
    renderer = threestudio.find(s.renderer_type)(s.renderer, geometry, material, background)
    for cell in (renderer, geometry, material, background):
        cell.set_train(True)
    return renderer, geometry.trainable_params() + material.trainable_params() + background.trainable_params()


def training_batches(cfg, views=None):
    """One batch per resolution stage of the camera datamodule (as the trainer would draw it),
    optionally cut to its first ``views[i]`` views."""
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed)
    dm.setup()
    steps = [0] + list(cfg.data.get("resolution_milestones", []))
    batches = [dm.train_dataset.collate_next(step) for step in steps]
    if views:
        batches = [{k: b[k][:n] for k in ("rays_o", "rays_d", "light_positions")}
                   for b, n in zip(batches, views) if n > 0]
    return batches


def bench(renderer, params, batch, iters):
    estimator = renderer.estimator
    sampler, sample_time = estimator.sampling, []

    def timed_sampling(*args, **kwargs):
        t = time.perf_counter()
        res = sampler(*args, **kwargs)
        sample_time.append(time.perf_counter() - t)
        return res

    estimator.sampling = timed_sampling
    inputs = {k: batch[k] for k in ("rays_o", "rays_d", "light_positions")}

    def loss():
        out = renderer(**inputs)
        return out["comp_rgb"].mean() + 0.01 * out["opacity"].mean()

    grad_fn = ms.value_and_grad(loss, None, params)
    times, stats = [], []
    for it in range(iters + 1):  # the first iteration warms up
        sample_time.clear()
        t = time.perf_counter()
        _, grads = grad_fn()
        _ = [g.asnumpy() for g in grads]  # make sure backward finished
        if it:
            times.append(time.perf_counter() - t)
            stats.append((dict(renderer.stats), sum(sample_time)))
    estimator.sampling = sampler
    n_views, height, width = batch["rays_o"].shape[:3]
    n_rays = n_views * height * width
    sec = float(np.median(times))
    per_ray = {k: float(np.mean([s[k] for s, _ in stats])) / n_rays for k in ("n_marched", "n_grid", "n_samples")}
    return {
        "views": n_views, "resolution": f"{height}x{width}", "rays": n_rays,
        "fwd_bwd_s": round(sec, 3),
        "sampler_s": round(float(np.median([t for _, t in stats])), 3),
        "samples_per_ray_marched": round(per_ray["n_marched"], 1),
        "samples_per_ray_in_grid": round(per_ray["n_grid"], 1),
        "samples_per_ray_kept": round(per_ray["n_samples"], 2),
        "rays_per_s": round(n_rays / sec),
        "kept_samples_per_s": round(per_ray["n_samples"] * n_rays / sec),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
    }


def run(args):
    from mvdream.runtime import setup_runtime

    setup_runtime("CPU")
    np.random.seed(0)  # stratified offsets, grid jitter
    ms.set_seed(0)
    import random
    random.seed(0)  # background colour augmentation
    cfg = load_config(args.config, cli_args=["system.prompt_processor.prompt=benchmark"])
    renderer, params = build_scene(cfg, args.backend)
    g = cfg.system.geometry.pos_encoding_config
    print(f"backend {args.backend}: {cfg.system.geometry_type} ({g.n_levels} levels, 2^{g.log2_hashmap_size} "
          f"table), {cfg.system.material_type}, {cfg.system.background_type}, "
          f"{cfg.system.renderer_type} ({renderer.cfg.num_samples_per_ray} samples per ray)")
    for k in range(4):  # warm-up updates (every cell is evaluated before step 256)
        renderer.update_step(0, 16 * k)
    print(f"occupied cells after warm-up: {int(renderer.estimator.binaries.asnumpy().sum())} / 32768")
    for batch in training_batches(cfg, args.views):
        print(json.dumps({"backend": args.backend, **bench(renderer, params, batch, args.iters)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--backend", default="all", choices=["all", *hashgrid._BACKENDS])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--views", type=lambda v: [int(x) for x in v.split(",")], default=None,
                        help="views per stage, e.g. 8,1 (default: the config's batch sizes; 0 skips a stage)")
    args = parser.parse_args()
    if args.backend != "all":
        run(args)
        return
    for name in hashgrid.available_backends():
        cmd = [sys.executable, __file__, "--config", args.config, "--backend", name, "--iters", str(args.iters)]
        if args.views:
            cmd += ["--views", ",".join(map(str, args.views))]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()

"""Ablation of view-dependent colour (issue 15): held-out PSNR of three NeRF variants on a
specular scene and its Lambertian control, mean +- std over seeds, and seconds per step.

    python tools/ablate_viewdep.py [--seeds 0,1,2] [--steps 200] [--rays 1024] [--spp 128] [--jobs 1]

Variants (tests/specular_scene.py): ``xyz-only`` (the original implicit-volume + no-material),
``dir-encoding`` (implicit-volume ``dir_encoding_config``: SH degree 4 into the feature network),
``neural-radiance-material`` (8 features + SH degree 4 through threestudio's material MLP).
Ground truth: two Blinn-Phong spheres ray-traced in float64 (``specular``) and the same with
no highlight (``lambertian``); 12 training views, 6 held-out views, 64x64. Each fit uses the
real hash-grid implicit-volume, occupancy-grid renderer and the system's AdamW. ``--jobs N``
runs the fits in N processes (seconds per step then include the contention between them).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
os.environ.setdefault("GLOG_v", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "MVDream-threestudio"), str(ROOT / "MVDream")]

import numpy as np  # noqa: E402

SCENES = ("specular", "lambertian")
VARIANT_NAMES = ("xyz-only", "dir-encoding", "neural-radiance-material")


def run_one(scene, variant, seed, args):
    from specular_scene import fit_variant
    r = fit_variant(scene, variant, seed, args.steps, args.rays, args.spp)
    return {"scene": scene, "variant": variant, "seed": seed, "psnr": r["psnr"], "object_psnr": r["object_psnr"],
            "step_s": r["step_s"]}


def table(results):
    lines = ["| scene | variant | held-out PSNR (dB) | object pixels PSNR (dB) | s/step | seeds |",
             "|---|---|---|---|---|---|"]
    for scene in SCENES:
        for variant in VARIANT_NAMES:
            rows = [r for r in results if r["scene"] == scene and r["variant"] == variant]
            if not rows:
                continue
            psnr, obj, step = (np.array([r[k] for r in rows]) for k in ("psnr", "object_psnr", "step_s"))
            lines.append(f"| {scene} | {variant} | {psnr.mean():.2f} ± {psnr.std():.2f} | "
                         f"{obj.mean():.2f} ± {obj.std():.2f} | {step.mean():.2f} | {len(rows)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rays", type=int, default=1024, help="training rays per step")
    parser.add_argument("--spp", type=int, default=128, help="renderer num_samples_per_ray")
    parser.add_argument("--scenes", default=",".join(SCENES))
    parser.add_argument("--variants", default=",".join(VARIANT_NAMES))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", help=argparse.SUPPRESS)  # scene:variant:seed, one fit (worker)
    args = parser.parse_args()
    for name, allowed in (("scenes", SCENES), ("variants", VARIANT_NAMES)):
        bad = set(getattr(args, name).split(",")) - set(allowed)
        if bad:
            parser.exit(2, f"error: unknown {name[:-1]} '{sorted(bad)[0]}'; choose from {', '.join(allowed)}\n")
    if args.only:
        scene, variant, seed = args.only.split(":")
        print(json.dumps(run_one(scene, variant, int(seed), args)), flush=True)
        return
    tasks = [(s, v, int(seed)) for seed in args.seeds.split(",") for s in args.scenes.split(",")
             for v in args.variants.split(",")]
    results = []
    if args.jobs <= 1:
        for task in tasks:
            results.append(run_one(*task, args))
            print(json.dumps(results[-1]), flush=True)
    else:
        common = ["--steps", str(args.steps), "--rays", str(args.rays), "--spp", str(args.spp)]
        pending, running = list(tasks), []
        while pending or running:
            while pending and len(running) < args.jobs:
                s, v, seed = pending.pop(0)
                running.append(subprocess.Popen([sys.executable, __file__, "--only", f"{s}:{v}:{seed}", *common],
                                                stdout=subprocess.PIPE, text=True))
            proc = running.pop(0)
            out, _ = proc.communicate()
            if proc.returncode:
                parser.exit(1, f"error: a fit failed (exit {proc.returncode}); run it alone with --jobs 1\n")
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()

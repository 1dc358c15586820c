"""Ablation of view-dependent colour (issue 15): held-out PSNR of three NeRF variants on a
specular scene and its Lambertian control, mean +- std over seeds, and seconds per step.

    python tools/ablate_viewdep.py [--seeds 0,1,2] [--steps 700] [--rays 1024] [--spp 128] [--jobs 1]
    python tools/ablate_viewdep.py --table run1.log run2.log   # table of earlier runs' result lines
    python tools/ablate_viewdep.py --cost [--rounds 2]   # render step cost on the real config

Variants (tests/specular_scene.py): ``xyz-only`` (the original implicit-volume + no-material),
``dir-encoding`` (implicit-volume ``dir_encoding_config``: SH degree 4 into the feature network),
``neural-radiance-material`` (8 features + SH degree 4 through threestudio's material MLP).
Ground truth: two Blinn-Phong spheres ray-traced in float64 (``specular``) and the same with
no highlight (``lambertian``); 16 training views, 6 held-out views, 64x64. Each fit uses the
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
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools"), str(ROOT / "MVDream-threestudio"), str(ROOT / "MVDream")]

import numpy as np  # noqa: E402

SCENES = ("specular", "lambertian")
VARIANT_NAMES = ("xyz-only", "dir-encoding", "neural-radiance-material")


def run_one(scene, variant, seed, args):
    from specular_scene import fit_variant
    r = fit_variant(scene, variant, seed, args.steps, args.rays, args.spp)
    return {"scene": scene, "variant": variant, "seed": seed, "psnr": r["psnr"], "object_psnr": r["object_psnr"],
            "step_s": r["step_s"]}


# the real config's NeRF with each option (mvdream-sd21.yaml + overrides)
SH4 = {"otype": "SphericalHarmonics", "degree": 4}
COST_VARIANTS = {  # name -> (overrides, material config replacing the original's or None)
    "xyz-only": ([], None),
    "dir-encoding": (["system.geometry.dir_encoding_config={otype: SphericalHarmonics, degree: 4}"], None),
    "neural-radiance-material": (["system.geometry.n_feature_dims=8", "system.material_type=neural-radiance-material"],
                                 {"input_feature_dims": 8, "dir_encoding_config": SH4}),
}


def render_cost(rounds: int):
    """Seconds per training render (forward + backward) of one 64x64 x 8 batch with the real
    config's renderer (16-level 2^19 hash grid, 512 samples per ray), per option, measured
    alternately (A B C A B C) in this process, after the warm-up grid updates (bench_render)."""
    import mindspore as ms
    from bench_render import DEFAULT_CONFIG, bench, build_scene, training_batches
    from threestudio.utils.config import load_config

    scenes = {}
    for name, (overrides, material) in COST_VARIANTS.items():
        np.random.seed(0)
        ms.set_seed(0)
        cfg = load_config(str(DEFAULT_CONFIG), cli_args=["system.prompt_processor.prompt=benchmark", *overrides])
        if material is not None:
            cfg.system.material = material
        renderer, params = build_scene(cfg, "auto")
        for k in range(4):  # warm-up updates, as bench_render
            renderer.update_step(0, 16 * k)
        scenes[name] = (renderer, params, training_batches(cfg, [8, 0])[0])
    times = {name: [] for name in scenes}
    for _ in range(rounds):
        for name, (renderer, params, batch) in scenes.items():
            np.random.seed(0)
            result = bench(renderer, params, batch, 1)
            times[name].append(result["fwd_bwd_s"])
            print(json.dumps({"variant": name, **result}), flush=True)
    print("| option | render fwd+bwd, 64x64 x 8 (s) | runs |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {np.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


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
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--rays", type=int, default=1024, help="training rays per step")
    parser.add_argument("--spp", type=int, default=128, help="renderer num_samples_per_ray")
    parser.add_argument("--scenes", default=",".join(SCENES))
    parser.add_argument("--variants", default=",".join(VARIANT_NAMES))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--table", nargs="+", metavar="LOG",
                        help="only print the table of the JSON result lines in these earlier outputs")
    parser.add_argument("--cost", action="store_true", help="time the real config's render step per option")
    parser.add_argument("--rounds", type=int, default=2, help="--cost: alternating rounds")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # scene:variant:seed, one fit (worker)
    args = parser.parse_args()
    for name, allowed in (("scenes", SCENES), ("variants", VARIANT_NAMES)):
        bad = set(getattr(args, name).split(",")) - set(allowed)
        if bad:
            parser.exit(2, f"error: unknown {name[:-1]} '{sorted(bad)[0]}'; choose from {', '.join(allowed)}\n")
    if args.cost:
        render_cost(args.rounds)
        return
    if args.table:
        lines = [line for path in args.table for line in Path(path).read_text().splitlines()]
        print(table([json.loads(line) for line in lines if line.startswith('{"scene"')]))
        return
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

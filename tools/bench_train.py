"""Benchmark full mvdream-system training steps (what launch.py --train runs per step), with a
random-weight guidance.

    PYTHONPATH=MVDream:MVDream-threestudio python tools/bench_train.py [--tiny] [--iters 2]

Full size (default): configs/mvdream-sd21.yaml as shipped (hash-grid NeRF, occupancy grid,
environment-map background, ``sd-v2.1-base-4view`` built with ``pretrained=false``: 1.3B random
parameters, nothing downloaded), at its two training stages: 64x64 renders batch 8 (step 0) and
256x256 renders batch 4 (after the 5000-step milestone); fp32 (``trainer.precision=32``, fp32
guidance) and fp16 (``trainer.precision=16-mixed``). On CPU the guidance's VAE backward and the
renderer's backward run in pieces (their auto defaults) and a 64x64 x 8 step peaks at ~15 GB;
minutes per step on a small CPU: do not run it next to other heavy jobs.
``--tiny``: configs/mvdream-tiny.yaml (tiny random MVDream) at 8x8 batch 8 and 16x16 batch 4, to
check the tool end to end in seconds.

One JSON line per setting: median seconds per training step, split into render (the renderer's
forward), VAE encode (forward), UNet (CFG noise prediction and target, both halves), the rest
of the forward (losses, resize, ...), backward and optimizer; mean samples per ray; peak host
RSS of the process so far (settings run from small to large) and, off CPU, peak device memory.
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MVDream"), str(ROOT / "MVDream-threestudio"), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402

import threestudio  # noqa: E402
from bench_guidance import Timer  # noqa: E402
from threestudio.utils.experiment import (checkpoint_config, load_experiment, seed_everything,  # noqa: E402
                                          trainer_config)
from threestudio.utils.trainer import Trainer  # noqa: E402

CONFIGS = ROOT / "MVDream-threestudio" / "configs"
COMMON = ["system.prompt_processor.prompt=a bench", "system.guidance.pretrained=false",
          "trainer.enable_progress_bar=false"]
PRECISIONS = {"fp32": ["trainer.precision=32", "system.guidance.half_precision_weights=false"],
              "fp16": ["trainer.precision=16-mixed"]}
# (config, overrides, [(label, training step)]): one step per resolution stage
FULL = ("mvdream-sd21.yaml", [], [("64x64", 0), ("256x256", 5000)])
TINY = ("mvdream-tiny.yaml", ["data.width=[8,16]", "data.height=[8,16]", "data.batch_size=[8,4]",
                              "data.resolution_milestones=[10]"], [("8x8", 0), ("16x16", 10)])


def build(config, overrides, trial_dir):
    cfg, _, _ = load_experiment(str(CONFIGS / config), COMMON + overrides)
    seed_everything(cfg.seed)
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed)
    dm.setup()
    tcfg = trainer_config(cfg)
    start = time.perf_counter()
    system = threestudio.find(cfg.system_type)(cfg.system, precision=tcfg.precision)
    build_s = time.perf_counter() - start
    trainer = Trainer(tcfg, checkpoint_config(cfg), trial_dir)
    trainer.setup_optimization(system)
    return dm, system, trainer, build_s


def timed_steps(dm, system, trainer, first_step, iters, warmup):
    """Median split of ``iters`` training steps (after ``warmup``) starting at ``first_step``."""
    timer = Timer()
    model, guidance, optimizer = system.guidance.model, system.guidance, trainer.optimizer
    # instance attributes shadow the methods while timing (removed in `finally`)
    wrapped = [(system, "forward", "render_s"), (system, "training_loss", "forward_s"),
               (model, "encode_first_stage", "vae_encode_s"), (guidance, "compute_target", "unet_s")]
    for obj, name, key in wrapped:
        setattr(obj, name, timer.wrap(key, getattr(obj, name)))
    # the chunked backward passes call encode_first_stage / the renderer again: split at the
    # end of the forward so that re-computation counts as backward
    timed_loss = system.training_loss
    forward_split = {}

    def training_loss(batch):
        loss = timed_loss(batch)
        forward_split.update(timer.seconds)
        return loss
    system.training_loss = training_loss
    trainer.optimizer = timer.wrap("optimizer_s", optimizer)
    rows, samples = [], []
    system.set_train(True)
    try:
        # an occupancy grid for this stage: the warm-up update (every cell) of step 0, then the
        # stage's last update, as when the stages run in order (--stages alone gives the same grid)
        system.do_update_step(0, 0)
        system.do_update_step(0, first_step - first_step % 16)
        for i in range(warmup + iters):
            step = first_step + 1 + i  # never a grid-update step (multiples of 16): timed apart
            batch = dm.train_dataset.collate_next(step)
            system.set_step(0, step)
            system.do_update_step(0, step)
            timer.seconds = {}
            forward_split.clear()
            start = time.perf_counter()
            loss = trainer.train_step(system, batch)
            total = time.perf_counter() - start
            if i >= warmup:
                s = dict(forward_split, optimizer_s=timer.seconds["optimizer_s"])
                rows.append({"total_s": total, "render_s": s["render_s"], "vae_encode_s": s["vae_encode_s"],
                             "unet_s": s["unet_s"],
                             "other_forward_s": s["forward_s"] - s["render_s"] - s["vae_encode_s"] - s["unet_s"],
                             "backward_s": total - s["forward_s"] - s["optimizer_s"],
                             "optimizer_s": s["optimizer_s"]})
                stats = system.renderer.stats
                samples.append(stats.get("n_samples", 0) / max(stats.get("n_rays", 1), 1))
            if not np.isfinite(loss):
                raise RuntimeError(f"non-finite loss {loss} at step {step}")
        shape = (batch["rays_o"].shape[0], batch["height"], batch["width"])
    finally:
        for obj, name, _ in wrapped:
            delattr(obj, name)  # training_loss: the split wrapper over the timer's
        trainer.optimizer = optimizer
    result = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    return shape, result, float(np.mean(samples))


def peak_memory():
    out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    if ms.get_context("device_target") != "CPU":
        out["peak_device_gb"] = round(ms.runtime.max_memory_allocated() / 2 ** 30, 2)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config (tool check)")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "fp16", "both"], default="both")
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "Ascend", "GPU"])
    # comma-separated, not nargs="+": a list option would swallow the positional overrides
    parser.add_argument("--stages", default=None,
                        help="only these render sizes, comma-separated, e.g. 64x64 (default: every stage)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.batch_size=[4,4]")
    args = parser.parse_args(argv)
    from mvdream.runtime import setup_runtime

    setup_runtime(args.device_target)
    config, overrides, stages = TINY if args.tiny else FULL
    precisions = ["fp32", "fp16"] if args.precision == "both" else [args.precision]
    results = []
    with tempfile.TemporaryDirectory() as trial_dir:
        for precision in precisions:
            dm, system, trainer, build_s = build(config, overrides + PRECISIONS[precision] + args.overrides,
                                                 trial_dir)
            for label, step in [s for s in stages if args.stages is None or s[0] in args.stages.split(",")]:
                shape, result, spr = timed_steps(dm, system, trainer, step, args.iters, args.warmup)
                row = {"config": config, "guidance": "tiny (random)" if args.tiny else "sd-v2.1-base-4view (random)",
                       "precision": precision, "render": label, "batch": shape[0],
                       "image_size": system.guidance.cfg.image_size, "build_s": round(build_s, 2),
                       **{k: round(v, 3) for k, v in result.items()}, "samples_per_ray": round(spr, 1),
                       **peak_memory()}
                assert f"{shape[1]}x{shape[2]}" == label, (shape, label)
                print(json.dumps(row), flush=True)
                results.append(row)
            del dm, system, trainer
    return results


if __name__ == "__main__":
    main()

"""Seconds and peak memory of whole full-size training steps through the real Trainer.

    python tools/bench_train_step.py system.guidance.vae_grad_chunk_size=1 [more key=value overrides]

Builds configs/mvdream-sd21.yaml with a random-weight guidance (nothing downloaded), fp32 unless
overridden, and times ``--steps`` calls of ``Trainer.train_step`` (no per-phase split: see
bench_train.py for that). A full-size step at 64x64 batch 8 needs > 24 GB without
``system.guidance.vae_grad_chunk_size``.
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MVDream"), str(ROOT / "MVDream-threestudio")]

import mvdream.runtime  # noqa: E402,F401  (MindSpore's environment, before MindSpore starts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--first_step", type=int, default=1, help="global step of the first timed step")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from mvdream.runtime import setup_runtime
    setup_runtime("CPU")
    import launch
    import threestudio
    from threestudio.utils.experiment import checkpoint_config, load_experiment, trainer_config
    from threestudio.utils.trainer import Trainer

    base = ["system.prompt_processor.prompt=a bench", "system.guidance.pretrained=false", "trainer.precision=32",
            "system.guidance.half_precision_weights=false"]
    cfg, _, _ = load_experiment(str(ROOT / "MVDream-threestudio" / "configs" / "mvdream-sd21.yaml"),
                                base + args.overrides)
    launch.seed_everything(cfg.seed)
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed)
    dm.setup()
    system = threestudio.find(cfg.system_type)(cfg.system, precision=trainer_config(cfg).precision)
    trainer = Trainer(trainer_config(cfg), checkpoint_config(cfg), tempfile.mkdtemp())
    trainer.setup_optimization(system)
    system.set_train(True)
    for step in range(args.first_step, args.first_step + args.steps):
        batch = dm.train_dataset.collate_next(step)
        system.set_step(0, step)
        system.do_update_step(0, step)
        start = time.perf_counter()
        loss = trainer.train_step(system, batch)
        print(f"step {step}: {batch['height']}x{batch['width']} batch {batch['rays_o'].shape[0]} "
              f"{time.perf_counter() - start:.1f} s, loss {loss:.1f}, peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GB", flush=True)


if __name__ == "__main__":
    main()

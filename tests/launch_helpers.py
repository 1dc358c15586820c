"""The tiny config (real modules, random-weight tiny MVDream): run launch.py in a subprocess,
or build its data module / system / trainer in-process."""
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import threestudio
from threestudio.utils.experiment import checkpoint_config, load_experiment, seed_everything, trainer_config
from threestudio.utils.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
THREESTUDIO = REPO / "MVDream-threestudio"
TINY = THREESTUDIO / "configs" / "mvdream-tiny.yaml"
LAUNCH = THREESTUDIO / "launch.py"


def tiny_config(tmp_path=None) -> str:
    """Path of the shipped tiny config (``tmp_path`` is accepted for older callers)."""
    return str(TINY)


def build_tiny(trial_dir, overrides=(), config=TINY):
    """(cfg, data module, system, trainer) as launch.py builds them for a training run (seeded
    the same way: the random init of the guidance is never checkpointed)."""
    cfg, _, _ = load_experiment(str(config), list(overrides))
    seed_everything(cfg.seed)
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed)
    dm.setup()
    tcfg = trainer_config(cfg)
    system = threestudio.find(cfg.system_type)(cfg.system, precision=tcfg.precision)
    system.set_save_dir(str(Path(trial_dir) / "save"))
    trainer = Trainer(tcfg, checkpoint_config(cfg), str(trial_dir))
    trainer.setup_optimization(system)
    return cfg, dm, system, trainer


def run_launch(args, cwd, timeout=300):
    """``python launch.py *args`` in a fresh process (as a user runs it)."""
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3",
               PYTHONPATH=os.pathsep.join([str(THREESTUDIO), str(REPO / "MVDream"),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-W", "ignore", str(LAUNCH), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def launch_main(argv) -> int:
    """Run launch.py in this process as its command line would (``python launch.py *argv``),
    without importing it as a module; returns the exit code."""
    saved, mask, term = sys.argv, signal.pthread_sigmask(signal.SIG_BLOCK, []), signal.getsignal(signal.SIGTERM)
    sys.argv = [str(LAUNCH), *map(str, argv)]
    try:
        runpy.run_path(str(LAUNCH), run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:  # launch.py routes SIGINT/SIGTERM through a thread: give pytest its own back
        sys.argv = saved
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGTERM, term)
    return 0

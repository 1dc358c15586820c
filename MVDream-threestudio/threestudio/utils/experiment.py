"""Experiment config (threestudio ``ExperimentConfig``) and the trial directory layout.

A trial lives in ``<exp_root_dir>/<name>/<tag>@<YYYYMMDD-HHMMSS>/``::

    configs/raw.yaml      the config as given (file merged with the command line, unresolved)
    configs/parsed.yaml   the resolved config (its ``timestamp`` makes a later run reuse this dir)
    ckpts/step<N>.ckpt    training checkpoints; ckpts/last.ckpt is the latest one
    save/                 validation images (it<N>-val/), test frames and videos (it<N>-test/)
    metrics.csv           one row per logged training step
    log.txt               the log of every run in this trial

Unlike threestudio, nothing is created while the config is parsed: ``make_trial_dir`` is called
once the experiment has been validated (so a bad command line leaves no trace in ``outputs``).
"""
import dataclasses
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, first_missing_key, missing_value_error, parse_structured


@dataclass
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"

    # derived in __post_init__, not meant to be set by hand
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1

    resume: Optional[str] = None

    data_type: str = ""
    data: dict = field(default_factory=dict)

    system_type: str = ""
    system: dict = field(default_factory=dict)

    # the subset of pytorch-lightning Trainer / ModelCheckpoint arguments used by the configs
    trainer: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.tag and not self.use_timestamp:
            raise ConfigError("either set a tag or keep use_timestamp=true")
        # a timestamp given in the config (configs/parsed.yaml of a trial) selects that trial dir
        self.explicit_timestamp = self.timestamp is not None
        if self.timestamp is None:
            self.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S") if self.use_timestamp else ""
        self.trial_name = self.tag + self.timestamp
        self.exp_dir = os.path.join(self.exp_root_dir, self.name)
        self.trial_dir = os.path.join(self.exp_dir, self.trial_name)


@dataclass
class TrainerConfig:
    """pytorch-lightning ``Trainer`` arguments of the threestudio configs (+ port options)."""

    max_steps: int = -1
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    val_check_interval: Any = 1.0  # int: every N steps; float (Lightning's default 1.0): never
    enable_progress_bar: bool = True
    # 32 / "32" / "32-true" or 16 / "16" / "16-mixed"; what it changes: the guidance's
    # compute_in_fp16 (the only precision rule)
    precision: Any = 32
    # Port option: a plain --train stops at the next data.resolution_milestones step (saving a
    # checkpoint there) so the high-resolution stage runs as `--train --train_highres resume=...`.
    # false: run straight through all milestones to max_steps in one process.
    stop_at_milestone: bool = True

    def __post_init__(self):
        if str(self.precision) not in ("16", "16-mixed", "32", "32-true"):
            raise ConfigError(f"trainer.precision must be 32 or 16-mixed, got {self.precision!r}")


@dataclass
class CheckpointConfig:
    """pytorch-lightning ``ModelCheckpoint`` arguments of the threestudio configs."""

    save_last: bool = True
    save_top_k: int = -1  # kept for compatibility: every periodic checkpoint is kept
    every_n_train_steps: Optional[int] = None


def load_experiment(path: str, cli_args=()) -> "tuple[ExperimentConfig, DictConfig, DictConfig]":
    """Read ``path`` + ``key=value`` overrides. Returns (ExperimentConfig, raw, resolved)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    bad = [a for a in cli_args if "=" not in a]
    if bad:
        raise ConfigError(f"argument '{bad[0]}' is neither a flag nor a key=value override")
    try:
        raw = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(cli_args)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot read config {path}: {str(err).splitlines()[0]}") from None
    missing = first_missing_key(raw)  # before resolving: the tag interpolates the prompt
    if missing:
        raise missing_value_error(missing)
    resolved = raw.copy()
    try:
        OmegaConf.resolve(resolved)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve config {path}: {str(err).splitlines()[0]}") from None
    cfg = parse_structured(ExperimentConfig, resolved)
    return cfg, raw, resolved


def trainer_config(cfg: ExperimentConfig) -> TrainerConfig:
    return parse_structured(TrainerConfig, cfg.trainer, prefix="trainer")


def checkpoint_config(cfg: ExperimentConfig) -> CheckpointConfig:
    return parse_structured(CheckpointConfig, cfg.checkpoint, prefix="checkpoint")


def make_trial_dir(cfg: ExperimentConfig) -> str:
    """Create the trial dir (and its subdirs); never reuse another trial's dir by accident.

    With a timestamp fixed in the config (resuming from a trial's configs/parsed.yaml, as in
    threestudio) the same directory is reused; otherwise an existing directory of the same name
    gets a ``-1``, ``-2`` ... suffix.
    """
    trial_dir = cfg.trial_dir
    if not cfg.explicit_timestamp:
        n = 0
        while os.path.exists(trial_dir):
            n += 1
            trial_dir = f"{cfg.trial_dir}-{n}"
        if n:
            cfg.timestamp += f"-{n}"  # so that configs/parsed.yaml points at this very dir
    cfg.trial_dir, cfg.trial_name = trial_dir, os.path.basename(trial_dir)
    for sub in ("configs", "ckpts", "save"):
        os.makedirs(os.path.join(trial_dir, sub), exist_ok=True)
    return trial_dir


def dump_configs(trial_dir: str, raw: DictConfig, resolved: DictConfig, cfg: ExperimentConfig):
    """configs/raw.yaml and configs/parsed.yaml (with the final trial name and timestamp)."""
    parsed = resolved.copy()
    derived = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ExperimentConfig)
               if f.name in ("timestamp", "exp_dir", "trial_name", "trial_dir")}
    parsed.merge_with(derived)
    OmegaConf.save(raw, os.path.join(trial_dir, "configs", "raw.yaml"))
    OmegaConf.save(parsed, os.path.join(trial_dir, "configs", "parsed.yaml"))

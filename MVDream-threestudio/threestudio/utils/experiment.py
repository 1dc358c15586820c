"""Experiment config (threestudio ``ExperimentConfig``) and the trial directory layout.

A trial lives in ``<exp_root_dir>/<name>/<tag>@<YYYYMMDD-HHMMSS>/``::

    configs/raw.yaml      the config as given (file merged with the command line, unresolved);
                          a run resumed into the same trial writes raw-resume-<n>.yaml beside it
    configs/parsed.yaml   the resolved config (its ``timestamp`` makes a later run reuse this dir)
    ckpts/step<N>.ckpt    training checkpoints; ckpts/last.ckpt is the latest one
    save/                 validation images (it<N>-val/), test frames and videos (it<N>-test/)
    metrics.csv           one row per logged training step
    log.txt               the log of every run in this trial

Unlike threestudio, nothing is created while the config is parsed: ``make_trial_dir`` is called
once the experiment has been validated (so a bad command line leaves no trace in ``outputs``).
The tag (usually the prompt) becomes a safe directory name (``safe_name``), so a trial never
leaves ``exp_root_dir`` whatever the prompt holds.
"""
import dataclasses
import hashlib
import os
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, first_missing_key, missing_value_error, parse_structured

# The prompt of the default config when none is given (the README's example, t2i.py's default).
DEFAULT_PROMPT = "an astronaut riding a horse"
PROMPT_KEY = "system.prompt_processor.prompt"
MAX_NAME = 96  # characters of a tag/name kept in a directory name (+ "-" and an 8-digit hash)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+,=-]+")


def seed_everything(seed: int):
    """Seed Python, NumPy and MindSpore (the guidance's random init is never checkpointed)."""
    import mindspore as ms
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def safe_name(text: str) -> str:
    """A directory name made from ``text``: safe characters only, no leading dot, at most
    ``MAX_NAME`` characters; when anything had to change, a short hash of the full text is
    appended so that distinct texts stay distinct."""
    text = str(text)
    name = _UNSAFE.sub("_", text).lstrip(".")[:MAX_NAME]
    if name == text and name:
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name}-{digest}" if name else digest


def clean_cli_args(args) -> List[str]:
    """Command-line text that was not valid UTF-8 (surrogate escapes) -> U+FFFD, so configs,
    logs and names can be written."""
    return [a.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for a in args]


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
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"seed must be in 0..{2 ** 32 - 1}, got {self.seed}")
        # a timestamp given in the config (configs/parsed.yaml of a trial) selects that trial dir
        self.explicit_timestamp = self.timestamp is not None
        if self.timestamp is None:
            self.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S") if self.use_timestamp else ""
        self.trial_name = (safe_name(self.tag) if self.tag else "") + self.timestamp
        self.exp_dir = os.path.join(self.exp_root_dir, safe_name(self.name))
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
    # Port option: skip a step whose loss or gradient is not finite (logged, counted in
    # metrics.csv) instead of stopping the run (default: stop, keeping the last good checkpoint).
    skip_nonfinite_steps: bool = False

    def __post_init__(self):
        if str(self.precision) not in ("16", "16-mixed", "32", "32-true"):
            raise ConfigError(f"trainer.precision must be 32 or 16-mixed, got {self.precision!r}")


@dataclass
class CheckpointConfig:
    """pytorch-lightning ``ModelCheckpoint`` arguments of the threestudio configs."""

    save_last: bool = True
    save_top_k: int = -1  # kept for compatibility: every periodic checkpoint is kept
    every_n_train_steps: Optional[int] = None


def _read_yaml(path: str) -> DictConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML syntax, binary garbage, bad encoding: one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read config {path}: {reason}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config {path} is not a mapping of keys (got a {type(loaded).__name__}); "
                          "pass a threestudio config such as configs/mvdream-sd21.yaml")
    return loaded


def load_experiment(path: str, cli_args=(), fallback_prompt: Optional[str] = None
                    ) -> "tuple[ExperimentConfig, DictConfig, DictConfig]":
    """Read ``path`` + ``key=value`` overrides. Returns (ExperimentConfig, raw, resolved).
    ``fallback_prompt``: used when the config leaves the prompt missing (``???``)."""
    cli_args = clean_cli_args(cli_args)
    bad = [a for a in cli_args if "=" not in a]
    if bad:
        raise ConfigError(f"argument '{bad[0]}' is neither a flag nor a key=value override")
    loaded = _read_yaml(path)
    try:
        raw = OmegaConf.merge(loaded, OmegaConf.from_dotlist(list(cli_args)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot read config {path}: {str(err).splitlines()[0]}") from None
    if fallback_prompt is not None and prompt_is_missing(raw):
        OmegaConf.update(raw, PROMPT_KEY, fallback_prompt)
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


def prompt_is_missing(raw: DictConfig) -> bool:
    node = OmegaConf.select(raw, PROMPT_KEY.rsplit(".", 1)[0], default=None)
    # not `"prompt" in node`: that is False for a missing (???) value
    return isinstance(node, DictConfig) and "prompt" in node.keys() and OmegaConf.is_missing(node, "prompt")


def config_of_checkpoint(ckpt: str) -> Optional[str]:
    """``<trial>/configs/parsed.yaml`` of a checkpoint at ``<trial>/ckpts/<name>.ckpt``, or None
    (a checkpoint copied out of its trial folder)."""
    ckpt_dir = os.path.dirname(ckpt) or "."
    if os.path.basename(os.path.abspath(ckpt_dir)) != "ckpts":
        return None
    trial = os.path.dirname(ckpt_dir.rstrip("/")) or os.path.dirname(os.path.abspath(ckpt_dir))
    parsed = os.path.join(trial, "configs", "parsed.yaml")  # relative when the checkpoint's path is
    return parsed if os.path.isfile(parsed) else None


def resume_argument(cli_args) -> Optional[str]:
    """The value of the last ``resume=`` override, if any."""
    values = [a.split("=", 1)[1] for a in cli_args if a.startswith("resume=")]
    return values[-1] if values and values[-1] not in ("", "null", "None") else None


def check_trial_location(cfg: ExperimentConfig) -> None:
    """Fail before any work when the trial dir cannot be created (exp_root_dir is a file, or
    not writable)."""
    path = os.path.abspath(cfg.trial_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ConfigError(f"cannot create the trial folder {cfg.trial_dir}: {path} is a file, not a folder; "
                          "set exp_root_dir=<a folder>")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the trial folder {cfg.trial_dir}: {path} is not writable; "
                          "set exp_root_dir=<a writable folder>")


def trainer_config(cfg: ExperimentConfig) -> TrainerConfig:
    return parse_structured(TrainerConfig, cfg.trainer, prefix="trainer")


def checkpoint_config(cfg: ExperimentConfig) -> CheckpointConfig:
    return parse_structured(CheckpointConfig, cfg.checkpoint, prefix="checkpoint")


def choose_trial_dir(cfg: ExperimentConfig) -> str:
    """Settle the trial dir without creating it; never reuse another trial's dir by accident.

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
    cfg.explicit_timestamp = True  # settled: a second call keeps it
    return trial_dir


def make_trial_dir(cfg: ExperimentConfig) -> str:
    """Create the trial dir chosen by ``choose_trial_dir`` (and its subdirs)."""
    trial_dir = choose_trial_dir(cfg)
    for sub in ("configs", "ckpts", "save"):
        os.makedirs(os.path.join(trial_dir, sub), exist_ok=True)
    return trial_dir


def dump_configs(trial_dir: str, raw: DictConfig, resolved: DictConfig, cfg: ExperimentConfig):
    """configs/raw.yaml and configs/parsed.yaml (with the final trial name and timestamp). A run
    resumed into the same trial keeps the first raw.yaml and writes raw-resume-<n>.yaml."""
    parsed = resolved.copy()
    derived = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ExperimentConfig)
               if f.name in ("timestamp", "exp_dir", "trial_name", "trial_dir")}
    parsed.merge_with(derived)
    configs = os.path.join(trial_dir, "configs")
    raw_path, n = os.path.join(configs, "raw.yaml"), 0
    while os.path.exists(raw_path):
        n += 1
        raw_path = os.path.join(configs, f"raw-resume-{n}.yaml")
    _save_yaml(raw, raw_path)
    _save_yaml(parsed, os.path.join(configs, "parsed.yaml"))


def _save_yaml(cfg: DictConfig, path: str):
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        OmegaConf.save(cfg, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

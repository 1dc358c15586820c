"""Config parsing: YAML + ``key=value`` overrides -> OmegaConf -> dataclass ``Config``."""
import dataclasses
import logging
import warnings
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, missing value."""


# Resolvers used by the original threestudio configs.
_RESOLVERS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "idiv": lambda a, b: a // b,
    "basename": lambda p: p.rstrip("/").split("/")[-1],
    "rmspace": lambda s, sub: str(s).replace(" ", sub),
    "tuple2": lambda s: [float(s), float(s)],
    "gt0": lambda s: s > 0,
    "not": lambda s: not s,
    "calc_exp_lr_decay_rate": lambda factor, n: factor ** (1.0 / n),
}
with warnings.catch_warnings():
    # OmegaConf 2.4 deprecates register_new_resolver in favour of a new API that 2.3 lacks.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", UserWarning)
    for _name, _fn in _RESOLVERS.items():
        if not OmegaConf.has_resolver(_name):
            OmegaConf.register_new_resolver(_name, _fn)


MISSING = "???"


def first_missing_key(cfg: Any, prefix: str = "") -> Optional[str]:
    """Dotted path of the first mandatory value (``???``) in a dict/DictConfig, or None."""
    if isinstance(cfg, DictConfig):
        # not to_container(): a missing value can sit behind an interpolation (tag: ${...prompt})
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(cfg, dict):
        return None
    for key, value in cfg.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, str) and value == MISSING:
            return path
        found = first_missing_key(value, path)
        if found:
            return found
    return None


def missing_value_error(path: str, owner: Optional[type] = None) -> "ConfigError":
    """``owner``: the dataclass being parsed when ``path`` is relative to it (not a full path)."""
    if owner is not None:
        return ConfigError(f"'{path}' is missing (???) in the config of {owner.__qualname__}")
    example = '"a cat"' if path.endswith("prompt") else "<value>"
    return ConfigError(f"{path} is missing; set it on the command line: {path}={example}")


def parse_structured(fields_cls, cfg: Optional[Any] = None, prefix: str = ""):
    """Build ``fields_cls`` (a dataclass) from a dict/DictConfig, rejecting unknown keys and
    mandatory values left at ``???`` (OmegaConf's merge would silently keep the dataclass
    default for them). ``prefix``: where ``cfg`` sits in the experiment config (messages)."""
    if cfg is None:
        cfg = {}
    missing = first_missing_key(cfg, prefix)
    if missing:
        raise missing_value_error(missing, None if prefix else fields_cls)
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(fields_cls), cfg)
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "key", None) or str(err).split("\n")[0]
        raise ConfigError(
            f"unknown config key '{key}' for {fields_cls.__qualname__}; "
            f"valid keys: {', '.join(f.name for f in dataclasses.fields(fields_cls))}") from None
    except ValidationError as err:
        raise ConfigError(f"invalid value in config of {fields_cls.__qualname__}: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def config_to_primitive(config, resolve: bool = True):
    if isinstance(config, (DictConfig,)) or OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=resolve)
    return config


def load_config(*yamls: str, cli_args: list = (), from_string: bool = False, **kwargs) -> DictConfig:
    """Merge YAML files (or strings) with ``key=value`` CLI overrides and keyword overrides."""
    loaded = [OmegaConf.create(y) if from_string else OmegaConf.load(y) for y in yamls]
    bad = [a for a in cli_args if "=" not in a]
    if bad:
        raise ConfigError(f"override '{bad[0]}' is not of the form key=value")
    cli = OmegaConf.from_dotlist(list(cli_args))
    cfg = OmegaConf.merge(*loaded, cli, kwargs)
    OmegaConf.resolve(cfg)
    return cfg


def log_ignored_keys(cfg: Any, names, prefix: str) -> None:
    """Log (info) each of ``names`` that ``cfg`` (a parsed dataclass) sets to a non-default value:
    keys of the original configs that parse but do nothing in this port. Called once, where the
    module is configured."""
    for f in dataclasses.fields(cfg):
        if f.name not in names:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if config_to_primitive(getattr(cfg, f.name)) != default:
            logging.getLogger("threestudio").info(
                "%s.%s: accepted for compatibility, has no effect", prefix, f.name)

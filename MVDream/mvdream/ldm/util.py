"""Config helpers: build objects from ``{"target": "pkg.mod.Class", "params": {...}}``."""
import importlib


def exists(x):
    return x is not None


def default(val, d):
    """``val`` unless it is None, else ``d`` (called if it is a function)."""
    if exists(val):
        return val
    return d() if callable(d) else d


def _plain(value):
    # OmegaConf containers -> dict/list, so cells never see DictConfig/ListConfig
    # (MindSpore ops and shape arithmetic expect plain Python values).
    try:
        from omegaconf import OmegaConf
    except ImportError:  # omegaconf is optional for callers that pass plain dicts
        return value
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def get_obj_from_str(string, reload=False):
    """The object named by a dotted path, e.g. ``mvdream.ldm.interface.LatentDiffusionInterface``."""
    module, name = string.rsplit(".", 1)
    mod = importlib.import_module(module)
    if reload:
        mod = importlib.reload(mod)
    try:
        return getattr(mod, name)
    except AttributeError:
        raise ImportError(f"module '{module}' has no attribute '{name}' (config target '{string}')") from None


def instantiate_from_config(config):
    """``target(**params)`` of a config mapping; the placeholder strings
    ``__is_first_stage__`` / ``__is_unconditional__`` give None."""
    config = _plain(config)
    if config in ("__is_first_stage__", "__is_unconditional__"):
        return None
    if not isinstance(config, dict) or "target" not in config:
        raise KeyError("Expected key `target` to instantiate.")
    return get_obj_from_str(config["target"])(**(config.get("params") or {}))

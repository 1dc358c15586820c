"""Small helpers shared across modules."""
import os

from .config import config_to_primitive


def C(value, epoch: int, global_step: int):
    """Resolve a scheduled config value.

    A number is returned as is. A list ``[start_step, start_value, end_value, end_step]``
    (or ``[start_value, end_value, end_step]`` starting at step 0) interpolates linearly;
    an integer ``end_step`` counts global steps, a float one counts epochs.
    """
    if isinstance(value, (int, float)):
        return value
    value = config_to_primitive(value)
    if not isinstance(value, (list, tuple)) or len(value) not in (3, 4):
        raise TypeError(f"scheduled value must be a number or a 3/4-element list, got {value!r}")
    if len(value) == 3:
        value = [0, *value]
    start_step, start_value, end_value, end_step = value
    current = global_step if isinstance(end_step, int) else epoch
    progress = (current - start_step) / max(end_step - start_step, 1e-12)
    return start_value + (end_value - start_value) * min(max(progress, 0.0), 1.0)


def user_cache_dir(*parts: str) -> str:
    """A folder under the user's cache (``$THREESTUDIO_CACHE_DIR``, default
    ``~/.cache/threestudio_ms``), never relative to the working directory."""
    root = os.environ.get("THREESTUDIO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                   "threestudio_ms")
    return os.path.join(root, *parts)

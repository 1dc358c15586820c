"""Strict loading of a name -> numpy state dict into a MindSpore cell."""
import numpy as np
from mindspore import Tensor, dtype_to_nptype

from .torch_reader import CheckpointError


def _matcher(names):
    """A predicate from a collection of exact names or a callable."""
    if callable(names):
        return names
    names = frozenset(names)
    return names.__contains__


def _short(names, limit=5):
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def check_keys(wanted, available, source, ignore=(), allow_missing=()):
    """Raise one ``CheckpointError`` listing missing/unexpected names, if any are not allowed.

    ``wanted``/``available`` are the model's and the file's keys; ``ignore``
    (unexpected keys that may be dropped) and ``allow_missing`` are collections
    of names or predicates.
    """
    ignore, allow_missing = _matcher(ignore), _matcher(allow_missing)
    available = set(available)
    wanted_set = set(wanted)
    missing = sorted(k for k in wanted if k not in available and not allow_missing(k))
    unexpected = sorted(k for k in available - wanted_set if not ignore(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {_short(unexpected)}")
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(parts))


def load_state_dict_into(cell, state_dict, prefix="", strict=True, ignore=(), source="checkpoint",
                         allow_missing=()):
    """Copy ``state_dict[prefix + name]`` into every parameter ``name`` of ``cell``.

    With ``strict`` every parameter must be filled and every key under ``prefix``
    used, except keys matched by ``ignore`` (names relative to ``prefix``, or a
    predicate on them) and parameters matched by ``allow_missing`` (same).
    Shapes must always agree. Returns the list of keys that were used.
    """
    params = dict(cell.parameters_and_names())
    if strict:
        ignore_m, missing_m = _matcher(ignore), _matcher(allow_missing)
        check_keys([prefix + name for name in params],
                   [k for k in state_dict if k.startswith(prefix)], source,
                   ignore=lambda k: ignore_m(k[len(prefix):]),
                   allow_missing=lambda k: missing_m(k[len(prefix):]))
    # Check every shape before writing anything, so a failed load leaves the cell untouched.
    todo = []
    for name, param in params.items():
        key = prefix + name
        if key not in state_dict:
            continue
        value = state_dict[key]
        value = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model {tuple(param.shape)}")
        todo.append((key, param, value))
    for key, param, value in todo:
        np_dtype = dtype_to_nptype(param.dtype)
        param.set_data(Tensor(value if value.dtype == np_dtype else value.astype(np_dtype), dtype=param.dtype))
    return [key for key, _, _ in todo]

"""Strict loading of a name -> numpy state dict into a MindSpore cell."""
import numpy as np
from mindspore import Tensor

from .torch_reader import CheckpointError


def load_state_dict_into(cell, state_dict, prefix="", strict=True, ignore=(), source="checkpoint"):
    """Copy ``state_dict[prefix + name]`` into every parameter ``name`` of ``cell``.

    With ``strict`` every parameter must be filled and every key under ``prefix``
    used, except keys listed in ``ignore`` (exact names relative to ``prefix``).
    Returns the list of keys that were used.
    """
    params = dict(cell.parameters_and_names())
    wanted = {prefix + name: name for name in params}
    available = {k for k in state_dict if k.startswith(prefix)}
    missing = sorted(k for k in wanted if k not in state_dict)
    unexpected = sorted(k for k in available - set(wanted) if k[len(prefix):] not in ignore)
    if strict and (missing or unexpected):
        def _short(names):
            return ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {_short(unexpected)}")
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(parts))
    used = []
    for key, name in wanted.items():
        if key not in state_dict:
            continue
        param = params[name]
        value = np.asarray(state_dict[key])
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model {tuple(param.shape)}")
        # astype gives a native-byte-order float32 copy, which Tensor() always accepts.
        param.set_data(Tensor(value.astype(np.float32), dtype=param.dtype))
        used.append(key)
    return used

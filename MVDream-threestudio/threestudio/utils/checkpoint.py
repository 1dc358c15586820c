"""Training checkpoints: MindSpore ``.ckpt`` files written atomically.

One file holds named arrays (module parameters and buffers such as the occupancy grid, the
optimizer moments) plus one JSON string ``__meta__`` (format tag, global step, RNG states,
config fingerprint). The guidance weights are never stored: they are frozen and come from the
guidance's own checkpoint.

Writes go to a temporary file in the same directory, then ``os.replace`` (atomic on POSIX), so
an interrupted save never leaves a truncated ``last.ckpt``. A failed write removes its temporary
names (ours, ``.<name>.<pid>.tmp.ckpt``, and the ``.tmp.tmp`` one MindSpore writes first); the
names a killed process left behind are removed by the next save or resume in that folder.
"""
import base64
import hashlib
import json
import os
import re
from typing import Any, Dict, Tuple

import numpy as np
import mindspore as ms
from mindspore import Tensor

from mvdream.checkpoint.files import mindspore_scratch_name, save_mindspore_checkpoint

FORMAT = "mvdream-threestudio-mindspore-training-checkpoint/1"
META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, foreign, or from another model."""


# ---------------------------------------------------------------- JSON for RNG states
def _encode(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        obj = obj.asnumpy()
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint's metadata")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
        if "__bytes__" in obj:
            return base64.b64decode(obj["__bytes__"])
        if "__tuple__" in obj:
            return tuple(_decode(x) for x in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    return obj


def fingerprint(sections: Dict[str, Any]) -> Dict[str, str]:
    """Short digest per config section (what makes a checkpoint fit a model)."""
    return {name: hashlib.sha256(json.dumps(_encode(value), sort_keys=True).encode()).hexdigest()[:16]
            for name, value in sections.items()}


# ---------------------------------------------------------------- save / load
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp\.(ckpt|tmp)$")


def _temporary_name(path: str) -> str:
    # ends in .ckpt, or MindSpore would append it; MindSpore itself writes <..>.tmp.tmp first
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp.ckpt")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: str) -> list:
    """Remove the temporary checkpoint names of processes that no longer run (killed during a
    save) from ``directory``; returns what was removed."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        m = _TEMPORARY.match(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            try:
                os.remove(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def save_checkpoint(path: str, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
    """Write ``arrays`` and ``meta`` to ``path`` atomically; on any failure (full disk, signal)
    nothing but the previous ``path`` is left, and a one-line CheckpointError is raised."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory)
    tmp = _temporary_name(path)
    items = [{"name": k, "data": Tensor(np.ascontiguousarray(v))} for k, v in arrays.items()]
    try:
        save_mindspore_checkpoint(items, tmp, append_dict={META_KEY: json.dumps(_encode({"format": FORMAT, **meta}))})
        os.chmod(tmp, 0o644)  # MindSpore leaves 0o400
        os.replace(tmp, path)
    except OSError as err:
        raise CheckpointError(f"could not write {path}: {err.strerror or err}") from None
    finally:
        for name in (tmp, mindspore_scratch_name(tmp)):
            if os.path.exists(name):
                os.remove(name)


def load_checkpoint(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``; one-line CheckpointError otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = ms.load_checkpoint(path)
    except Exception:  # MindSpore raises ValueError/RuntimeError with multi-line messages
        raise CheckpointError(f"{path} is not a readable MindSpore checkpoint (corrupt or truncated?)") from None
    raw_meta = data.pop(META_KEY, None)
    try:
        meta = _decode(json.loads(raw_meta)) if isinstance(raw_meta, str) else {}
    except ValueError:
        meta = {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (no '{FORMAT}' metadata)")
    arrays = {k: v.asnumpy() for k, v in data.items()}
    return arrays, meta


def _first_difference(stored: Any, current: Any, path: str = ""):
    """(dotted key, stored value, current value) of the first difference of two config trees."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current), key=str):
            if stored.get(key) != current.get(key):
                return _first_difference(stored.get(key), current.get(key), f"{path}.{key}")
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for item_s, item_c in zip(stored, current):
            if item_s != item_c:
                return _first_difference(item_s, item_c, path)
    return path, stored, current


def _show(value: Any) -> str:
    return "not set" if value is None else json.dumps(value)


def check_fingerprint(path: str, meta: Dict[str, Any], expected: Dict[str, str],
                      sections: Dict[str, Any] = None) -> None:
    """Refuse a checkpoint written for another model config, naming the first differing section
    (and key, when the checkpoint stores its ``config`` sections and ``sections`` is given)."""
    stored = meta.get("fingerprint", {})
    for name in sorted(set(stored) | set(expected)):
        if stored.get(name) != expected.get(name):
            detail = ""
            stored_config = meta.get("config", {})
            if sections is not None and name in stored_config and name in sections:
                current = _decode(json.loads(json.dumps(_encode(sections[name]))))  # as stored
                key, was, now = _first_difference(stored_config[name], current)
                detail = f" ({name}{key}: {_show(was)} in the checkpoint, {_show(now)} here)"
            raise CheckpointError(
                f"{path} was written for a different model: its system.{name} config differs from this run's{detail}")

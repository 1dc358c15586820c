"""One entry point to read and write name -> numpy state dicts, by file extension.

* ``.pt`` / ``.pth``: PyTorch ``torch.save`` zips, read without torch (see
  ``torch_reader``); read only, since MindSpore code never needs to write them.
* ``.ckpt``: MindSpore checkpoints (``mindspore.save_checkpoint`` format).
* ``.safetensors``: via ``safetensors.numpy``.

Writing is atomic: the data goes to a temporary file in the target directory,
which is renamed over the target only once it is complete, so an interrupted or
failed write never leaves a partial checkpoint behind.
"""
import collections
import os
import tempfile
from pathlib import Path

import numpy as np

from .torch_reader import CheckpointError, read_torch_state_dict

TORCH_SUFFIXES = (".pt", ".pth")
READ_SUFFIXES = TORCH_SUFFIXES + (".ckpt", ".safetensors")
WRITE_SUFFIXES = (".ckpt", ".safetensors")


def check_suffix(path, allowed, action):
    """The lower-case extension of ``path``, or a CheckpointError if it is not in ``allowed``."""
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise CheckpointError(f"{path}: cannot {action} a '{suffix or '(no extension)'}' checkpoint; "
                              f"use one of {', '.join(allowed)}")
    return suffix


def _read_mindspore(path):
    import mindspore as ms
    try:
        params = ms.load_checkpoint(str(path))
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with multi-line text
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({reason})") from None
    return collections.OrderedDict((name, param.asnumpy()) for name, param in params.items())


def _read_safetensors(path):
    from safetensors.numpy import load_file
    try:
        return collections.OrderedDict(load_file(str(path)))
    except Exception as err:  # SafetensorError / TypeError (e.g. bf16, which numpy lacks)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None


def load_checkpoint_file(path, progress=False):
    """Read a ``.pt``/``.pth``/``.ckpt``/``.safetensors`` file into an OrderedDict name -> np.ndarray.

    ``{"state_dict": ...}`` nesting of PyTorch files is unwrapped; bfloat16
    storages come back as float32. Any problem raises a one-line
    ``CheckpointError`` that names the file.
    """
    path = Path(path)
    suffix = check_suffix(path, READ_SUFFIXES, "read")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if suffix in TORCH_SUFFIXES:
        return read_torch_state_dict(path, progress=progress)
    if suffix == ".ckpt":
        return _read_mindspore(path)
    return _read_safetensors(path)


def mindspore_scratch_name(path):
    """The name ``mindspore.save_checkpoint(..., path)`` writes to before renaming it to ``path``
    (its ``.ckpt`` suffix becomes ``.tmp``): a failed or killed save leaves this file behind."""
    root, ext = os.path.splitext(str(path))
    return root + ext.replace(".ckpt", ".tmp")


def save_mindspore_checkpoint(items, path, append_dict=None):
    """``mindspore.save_checkpoint(items, path)`` that never leaves its scratch file behind and
    does not print MindSpore's multi-line ``[CRITICAL]`` report when it fails (the caller
    reports the error in one line). ``path`` must end in ``.ckpt``."""
    import logging

    import mindspore as ms

    scratch = mindspore_scratch_name(path)
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        ms.save_checkpoint(items, str(path), append_dict=append_dict)
    except BaseException:
        for name in (scratch, str(path)):
            if os.path.exists(name):
                os.remove(name)
        raise
    finally:
        logging.disable(previous)


def _write_mindspore(state_dict, tmp_path):
    from mindspore import Tensor
    # from_numpy shares memory with the arrays: no second copy of a multi-GB model.
    save_mindspore_checkpoint([{"name": name, "data": Tensor.from_numpy(value)}
                               for name, value in state_dict.items()], tmp_path)


def _write_safetensors(state_dict, tmp_path):
    from safetensors.numpy import save_file
    save_file(dict(state_dict), str(tmp_path),
              metadata={"format": "np"})


def save_state_dict(state_dict, path):
    """Write ``state_dict`` (name -> array) to ``path`` (``.ckpt`` or ``.safetensors``), atomically."""
    path = Path(path)
    suffix = check_suffix(path, WRITE_SUFFIXES, "write")
    arrays = collections.OrderedDict()
    for name, value in state_dict.items():
        value = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        if value.dtype == object:
            raise CheckpointError(f"{path}: entry {name!r} is not a numeric array")
        # np.ascontiguousarray would turn 0-d arrays (e.g. logit_scale) into 1-d ones.
        arrays[str(name)] = np.require(value, requirements="C")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CheckpointError(f"{path}: output directory {directory} does not exist")
    # The temporary name keeps the extension: mindspore.save_checkpoint appends
    # '.ckpt' to any other name.
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        (_write_mindspore if suffix == ".ckpt" else _write_safetensors)(arrays, tmp_path)
        # MindSpore makes its files read-only (0o400); give the result ordinary permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if isinstance(err, (CheckpointError, KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"{path}: could not write the checkpoint ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    return path


def summarize_state_dict(state_dict):
    """(number of tensors, number of values, number of bytes) of a name -> array dict."""
    arrays = list(state_dict.values())
    return len(arrays), int(sum(a.size for a in arrays)), int(sum(a.nbytes for a in arrays))

"""Read PyTorch ``torch.save`` zip checkpoints into NumPy arrays, without torch.

The pickle inside a ``.pt`` file can name any Python callable; ``pickle.load``
would call it. This reader only lets through the handful of globals that a
tensor state dict needs (OrderedDict, the tensor/parameter rebuild helpers and
the storage classes) and rebuilds tensors itself from the raw storage bytes.
Everything else is refused before anything runs.
"""
import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely or does not fit the model."""


# Storage class name -> numpy dtype of its elements (little-endian on disk).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Storage:
    """A flat array of one storage record in the zip (shared by its views)."""

    def __init__(self, array):
        self.array = array


def _bfloat16_to_float32(raw):
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32)


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    flat = storage.array
    if len(size) == 0:
        return np.array(flat[storage_offset])
    itemsize = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    # Copy so that views of one shared storage become independent arrays.
    return np.ascontiguousarray(view).copy()


def _rebuild_parameter(data, *_unused):
    return data


def _rebuild_parameter_with_state(data, *_unused):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, load_storage, path):
        super().__init__(file)
        self._load_storage = load_storage
        self._path = path
        self._storages = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"{self._path}: refusing to load, the pickle references '{module}.{name}', which is not "
            "part of a tensor state dict (possibly malicious); re-save it as a plain state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r} in the pickle")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(self._load_storage(key, storage_type.name, numel))
        return self._storages[key]


def _find_archive_root(names, path):
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (no single data.pkl inside)")
    return pickles[0][: -len("data.pkl")]


def read_torch_checkpoint(path):
    """Return the pickled object of a ``torch.save`` zip file with tensors as numpy arrays.

    Raises ``CheckpointError`` (one line, naming the file) for a missing, corrupt,
    legacy-format or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (truncated, corrupt, or saved with the legacy "
            "non-zip format; re-save it with torch.save(..., _use_new_zipfile_serialization=True))")
    try:
        with zipfile.ZipFile(path) as archive:
            root = _find_archive_root(archive.namelist(), path)

            def load_storage(key, type_name, numel):
                raw = archive.read(f"{root}data/{key}")
                dtype = _STORAGE_DTYPES[type_name]
                if dtype == "bfloat16":
                    array = _bfloat16_to_float32(raw)
                else:
                    # Native byte order: MindSpore rejects explicitly little-endian dtypes.
                    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)
                if array.size < numel:
                    raise CheckpointError(f"{path}: storage {key} is truncated")
                return array

            with archive.open(f"{root}data.pkl") as handle:
                return _SafeUnpickler(handle, load_storage, path).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, KeyError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt PyTorch checkpoint ({type(err).__name__}: {err})") from None


def read_torch_state_dict(path):
    """Like ``read_torch_checkpoint`` but unwraps ``{"state_dict": ...}`` nesting."""
    obj = read_torch_checkpoint(path)
    while isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return collections.OrderedDict((k, v) for k, v in obj.items() if isinstance(v, np.ndarray))

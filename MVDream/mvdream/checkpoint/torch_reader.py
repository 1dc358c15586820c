"""Read PyTorch ``torch.save`` zip checkpoints into NumPy arrays, without torch.

The pickle inside a ``.pt`` file can name any Python callable; ``pickle.load``
would call it. This reader only lets through the handful of globals that a
tensor state dict needs (OrderedDict, the tensor/parameter rebuild helpers and
the storage classes) and rebuilds tensors itself from the raw storage bytes.
Everything else is refused before anything runs.

Layout of such a zip: ``<root>/data.pkl`` (the pickle), ``<root>/data/<key>``
(one raw little-endian record per storage), ``<root>/byteorder`` (optional).
Tensors reference a storage by key plus (offset, size, stride), so several
tensors can be views of one storage.
"""
import collections
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely or does not fit the model."""


# Storage class name -> numpy dtype of its elements; bfloat16 has no numpy dtype
# and is upcast to float32 (exact: bf16 is the top half of an f32).
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

# Storages are copied out of the zip in chunks of this size, so a 3 GB storage
# never needs a second 3 GB temporary.
_READ_CHUNK = 64 << 20
_NATIVE = "<" if sys.byteorder == "little" else ">"


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Storage:
    """The flat array of one storage record (shared by all of its views)."""

    def __init__(self, array, path, key):
        self.array = array
        self.path = path
        self.key = key
        self.handed_out = False  # the array itself was returned as a tensor


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    flat = storage.array
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(f"{storage.path}: storage {storage.key}: invalid tensor geometry "
                              f"(offset {offset}, size {size}, stride {stride})")
    numel = int(np.prod(size, dtype=np.int64))
    if numel == 0:
        return np.zeros(size, dtype=flat.dtype)
    # Bounds check before as_strided: a crafted file must not make us read
    # memory past the end of the storage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise CheckpointError(f"{storage.path}: storage {storage.key} is too small for a tensor of size "
                              f"{size} at offset {offset} (needs {last + 1} elements, has {flat.size})")
    contiguous = tuple(np.cumprod((1,) + size[:0:-1])[::-1]) if size else ()
    whole = offset == 0 and numel == flat.size and all(
        n == 1 or s == c for n, s, c in zip(size, stride, contiguous))
    if whole and not storage.handed_out:
        # The usual case (one tensor per storage): hand the array out without a copy.
        storage.handed_out = True
        return flat.reshape(size)
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False)
    # Copy so that views of one shared storage become independent arrays.
    return np.array(view, copy=True, order="C")


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
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            array = self._load_storage(key, storage_type.name, numel)
            self._storages[key] = _Storage(array, self._path, key)
        return self._storages[key]


def _find_archive_root(names, path):
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (no single data.pkl inside)")
    return pickles[0][: -len("data.pkl")]


def _read_record(archive, name, nbytes, progress):
    """Copy one zip member into a fresh writable uint8 array, chunk by chunk."""
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)
    with archive.open(name) as handle:
        done = 0
        while done < nbytes:
            got = handle.readinto(view[done:done + _READ_CHUNK])
            if not got:
                break
            done += got
            if progress is not None:
                progress.update(got)
    return buf, done


def _progress_bar(total_bytes, path, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"reading {Path(path).name}", leave=False,
                disable=None)  # None: no bar when stderr is not a terminal


def read_torch_checkpoint(path, progress=False):
    """Return the pickled object of a ``torch.save`` zip file with tensors as numpy arrays.

    ``progress``: show a tqdm bar over the bytes of all storages. Raises
    ``CheckpointError`` (one line, naming the file) for a missing, corrupt,
    legacy-format or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (truncated, corrupt, or saved with the legacy "
            "non-zip format; re-save it with torch.save(..., _use_new_zipfile_serialization=True))")
    bar = None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = _find_archive_root(names, path)
            byteorder = "<"
            if f"{root}byteorder" in names:
                text = archive.read(f"{root}byteorder").decode("ascii", "replace").strip()
                if text not in ("little", "big"):
                    raise CheckpointError(f"{path}: unknown byteorder record {text!r}")
                byteorder = "<" if text == "little" else ">"
            data_prefix = f"{root}data/"
            bar = _progress_bar(sum(archive.getinfo(n).file_size for n in names if n.startswith(data_prefix)),
                                path, progress)

            def load_storage(key, type_name, numel):
                name = data_prefix + key
                dtype = _STORAGE_DTYPES[type_name]
                itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
                need = numel * itemsize
                # Check the record size before allocating, so a crafted numel cannot
                # make us allocate terabytes.
                if archive.getinfo(name).file_size < need:
                    raise CheckpointError(f"{path}: storage {key} is truncated "
                                          f"({archive.getinfo(name).file_size} of {need} bytes)")
                buf, got = _read_record(archive, name, need, bar)
                if got < need:
                    raise CheckpointError(f"{path}: storage {key} is truncated ({got} of {need} bytes)")
                if dtype == "bfloat16":
                    bits = buf.view(byteorder + "u2").astype(np.uint32) << 16
                    return bits.view(np.float32)
                native = np.dtype(dtype)
                if byteorder == _NATIVE:
                    return buf.view(native)
                # Swap to native order, so downstream code never sees '>f4' arrays.
                return buf.view(native.newbyteorder(byteorder)).astype(native)

            with archive.open(f"{root}data.pkl") as handle:
                return _SafeUnpickler(handle, load_storage, path).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, KeyError, OSError, ValueError,
            TypeError, IndexError, AttributeError, MemoryError) as err:
        raise CheckpointError(f"{path}: corrupt PyTorch checkpoint ({type(err).__name__}: {err})") from None
    finally:
        if bar is not None:
            bar.close()


def _flatten_state_dict(obj, path):
    """Unwrap ``{"state_dict": ...}`` nesting and keep the array entries."""
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    arrays = collections.OrderedDict((str(k), v) for k, v in obj.items() if isinstance(v, np.ndarray))
    if not arrays:
        raise CheckpointError(f"{path}: contains no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    return arrays


def read_torch_state_dict(path, progress=False):
    """Like ``read_torch_checkpoint`` but returns the (unwrapped) name -> array state dict."""
    return _flatten_state_dict(read_torch_checkpoint(path, progress=progress), path)

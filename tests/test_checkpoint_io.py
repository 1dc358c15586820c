"""Checkpoint IO: the torch-free .pt reader on hand-made torch zips, .ckpt /
.safetensors round trips, the converter tool, and one-line errors."""
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mvdream.checkpoint import (CheckpointError, load_checkpoint_file, load_state_dict_into,
                                read_torch_checkpoint, save_state_dict)
from mvdream.ldm.modules.torch_layers import Linear

REPO = Path(__file__).resolve().parents[1]
CONVERT = REPO / "tools" / "convert_pt2ms.py"


# ---------------------------------------------------------------- torch zip writer
# A minimal pickle (protocol 2) emitter: enough opcodes to spell what torch.save
# writes for a state dict, plus the globals a malicious file would use.
class G:  # a global reference
    def __init__(self, module, name):
        self.module, self.name = module, name


class R:  # callable(*args) via REDUCE
    def __init__(self, func, *args):
        self.func, self.args = func, args


class P:  # a persistent id (BINPERSID)
    def __init__(self, pid):
        self.pid = pid


def _emit(obj, out):
    if isinstance(obj, G):
        out += b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
    elif isinstance(obj, R):
        _emit(obj.func, out)
        _emit(tuple(obj.args), out)
        out += b"R"
    elif isinstance(obj, P):
        _emit(obj.pid, out)
        out += b"Q"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        out += b"J" + struct.pack("<i", obj)
    elif isinstance(obj, str):
        data = obj.encode()
        out += b"X" + struct.pack("<I", len(data)) + data
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _emit(item, out)
        out += b"t"
    elif isinstance(obj, dict):
        _emit(R(G("collections", "OrderedDict")), out)
        for key, value in obj.items():
            _emit(key, out)
            _emit(value, out)
            out += b"s"
    else:
        raise TypeError(type(obj))


def pickle_bytes(obj):
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


_STORAGE = {np.float32: "FloatStorage", np.float16: "HalfStorage", np.int64: "LongStorage",
            "bf16": "BFloat16Storage"}


def tensor(key, kind, numel, offset, size, stride):
    """What torch.save pickles for one tensor: a view (offset/size/stride) of storage ``key``."""
    storage = P(("storage", G("torch", _STORAGE[kind]), key, "cpu", numel))
    return R(G("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(size), tuple(stride), False,
             R(G("collections", "OrderedDict")))


def write_torch_zip(path, obj, storages, root="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", pickle_bytes(obj))
        archive.writestr(f"{root}/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"{root}/data/{key}", raw)
        archive.writestr(f"{root}/version", "3\n")
    return path


def _bf16_bytes(values):
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------- .pt reader
def test_reader_rebuilds_views_dtypes_and_nesting(tmp_path):
    base = np.arange(24, dtype=np.float32)
    half = (np.arange(6, dtype=np.float32) / 4).astype(np.float16)
    bf16_values = np.array([1.0, -2.5, 3.140625, 0.0078125], np.float32)  # exact in bf16
    longs = np.array([7, -3, 2 ** 40], np.int64)
    state = {
        # the whole storage, contiguous
        "full": tensor("0", np.float32, 24, 0, (2, 3, 4), (12, 4, 1)),
        # a transposed view of the same storage (shared storage, non-contiguous)
        "transposed": tensor("0", np.float32, 24, 0, (4, 6), (1, 4)),
        # a row slice with an offset
        "row": tensor("0", np.float32, 24, 13, (5,), (1,)),
        # every other element
        "strided": tensor("0", np.float32, 24, 1, (6,), (4,)),
        "scalar": tensor("0", np.float32, 24, 23, (), ()),
        "half": tensor("1", np.float16, 6, 0, (2, 3), (3, 1)),
        "bf16": tensor("2", "bf16", 4, 0, (2, 2), (2, 1)),
        "long": tensor("3", np.int64, 3, 0, (3,), (1,)),
    }
    path = write_torch_zip(tmp_path / "views.pt", {"epoch": 3, "state_dict": {"state_dict": state}}, {
        "0": base.tobytes(), "1": half.tobytes(), "2": _bf16_bytes(bf16_values), "3": longs.tobytes()})
    sd = load_checkpoint_file(path)
    assert list(sd) == list(state)
    expect = {
        "full": base.reshape(2, 3, 4), "transposed": base.reshape(6, 4).T, "row": base[13:18],
        "strided": base[1::4], "scalar": np.array(23.0, np.float32), "half": half.reshape(2, 3),
        "bf16": bf16_values.reshape(2, 2), "long": longs,
    }
    for key, value in expect.items():
        assert sd[key].dtype == value.dtype, key
        assert sd[key].shape == value.shape, key
        np.testing.assert_array_equal(sd[key], value, err_msg=key)
    assert sd["bf16"].dtype == np.float32  # bf16 upcast
    # Views of one storage come back as independent arrays.
    sd["transposed"][0, 0] = 100.0
    assert sd["full"][0, 0, 0] == 0.0 and sd["row"][0] == 13.0
    # The raw object keeps the nesting and the non-tensor entries.
    obj = read_torch_checkpoint(path)
    assert obj["epoch"] == 3 and set(obj["state_dict"]["state_dict"]) == set(state)


def test_reader_reads_the_real_tiny_checkpoint(tiny_state_dict, parity_dir):
    rows = [line.split("\t") for line in (parity_dir / "tiny_mvdream.keys.tsv").read_text().splitlines()[1:]]
    assert list(tiny_state_dict) == [r[0] for r in rows]
    for key, shape, dtype, numel in rows:
        value = tiny_state_dict[key]
        assert value.shape == (() if shape == "scalar" else tuple(int(d) for d in shape.split("x")))
        assert value.dtype == np.dtype(dtype) and value.size == int(numel)
    assert sum(v.size for v in tiny_state_dict.values()) == 6207500
    np.testing.assert_array_equal(tiny_state_dict["betas"], np.load(parity_dir / "ldm_tiny.npz")["sched_betas"])


@pytest.mark.parametrize("module,name,args", [
    ("os", "system", ("touch {marker}",)),
    ("builtins", "eval", ("open({marker!r}, 'w').close()",)),
    ("subprocess", "Popen", (("touch", "{marker}"),)),
])
def test_reader_refuses_code_execution(tmp_path, module, name, args):
    marker = str(tmp_path / "pwned")
    fmt = lambda a: tuple(fmt(x) for x in a) if isinstance(a, tuple) else a.format(marker=marker)  # noqa: E731
    payload = {"weight": tensor("0", np.float32, 2, 0, (2,), (1,)), "evil": R(G(module, name), *fmt(args))}
    path = write_torch_zip(tmp_path / "evil.pt", payload, {"0": np.ones(2, np.float32).tobytes()})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    text = _one_line(err)
    assert str(path) in text and f"{module}.{name}" in text and "refusing" in text
    assert not os.path.exists(marker)


def test_reader_rejects_out_of_bounds_views(tmp_path):
    # A view reaching past its storage must not read foreign memory.
    path = write_torch_zip(tmp_path / "oob.pt", {"w": tensor("0", np.float32, 4, 2, (2, 2), (2, 1))},
                           {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    assert str(path) in _one_line(err) and "too small" in str(err.value)


def test_reader_rejects_short_storage_record(tmp_path):
    path = write_torch_zip(tmp_path / "short.pt", {"w": tensor("0", np.float32, 8, 0, (8,), (1,))},
                           {"0": np.zeros(3, np.float32).tobytes()})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    assert str(path) in _one_line(err) and "truncated" in str(err.value)


def _bad_file_cases(tmp_path, parity_dir):
    raw = (parity_dir / "tiny_mvdream.pt").read_bytes()
    cases = {
        "truncated.pt": raw[: len(raw) // 2],
        "garbage.pt": b"this is not a checkpoint at all" * 10,
        "empty.pth": b"",
        "garbage.ckpt": b"\x00\x01garbage" * 50,
        "truncated.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    # a real zip that is not a torch checkpoint
    with zipfile.ZipFile(tmp_path / "foreign.pt", "w") as archive:
        archive.writestr("readme.txt", "hello")
    return list(cases) + ["foreign.pt", "missing.pt", "model.bin"]


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, parity_dir):
    for name in _bad_file_cases(tmp_path, parity_dir):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint_file(tmp_path / name)
        assert str(tmp_path / name) in _one_line(err), name


# ------------------------------------------------------------- .ckpt/.safetensors
def test_save_and_reload_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    sd = {"a.weight": rng.standard_normal((3, 4)).astype(np.float32), "a.bias": np.arange(3, dtype=np.float16),
          "scale": np.array(2.5, np.float32), "ids": np.arange(5, dtype=np.int64),
          "view": rng.standard_normal((4, 6)).astype(np.float32).T}  # non-contiguous input
    for suffix in (".ckpt", ".safetensors"):
        out = save_state_dict(sd, tmp_path / f"m{suffix}")
        back = load_checkpoint_file(out)
        assert set(back) == set(sd)
        for key in sd:
            assert back[key].dtype == sd[key].dtype and back[key].shape == sd[key].shape, (suffix, key)
            np.testing.assert_array_equal(back[key], sd[key])
        assert os.access(out, os.W_OK)  # not left read-only like mindspore's own files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.safetensors"]  # no temp files


def test_failed_write_leaves_no_partial_output(tmp_path, monkeypatch):
    import safetensors.numpy
    target = tmp_path / "out.safetensors"
    save_state_dict({"x": np.zeros(2, np.float32)}, target)
    before = target.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save)
    with pytest.raises(CheckpointError) as err:
        save_state_dict({"x": np.ones(2, np.float32)}, target)
    assert str(target) in _one_line(err) and "disk full" in str(err.value)
    assert target.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
    with pytest.raises(CheckpointError):
        save_state_dict({"x": np.ones(2)}, tmp_path / "out.pt")  # .pt is read-only
    with pytest.raises(CheckpointError):
        save_state_dict({"x": np.ones(2)}, tmp_path / "no_such_dir" / "out.ckpt")


def test_ckpt_of_another_model_does_not_load(tmp_path):
    cell = Linear(3, 4)
    original = cell.weight.asnumpy().copy()
    path = save_state_dict({"weight": np.ones((4, 3), np.float32), "gamma": np.ones(4, np.float32)},
                           tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_state_dict_into(cell, load_checkpoint_file(path), source=str(path))
    text = _one_line(err)
    assert str(path) in text and "missing bias" in text and "unexpected gamma" in text
    wrong_shape = save_state_dict({"weight": np.ones((3, 3), np.float32), "bias": np.ones(4, np.float32)},
                                  tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_state_dict_into(cell, load_checkpoint_file(wrong_shape), source=str(wrong_shape))
    assert "shape mismatch for weight" in _one_line(err)
    np.testing.assert_array_equal(cell.weight.asnumpy(), original)  # nothing half-loaded
    good = save_state_dict({"weight": np.full((4, 3), 0.5, np.float16), "bias": np.arange(4, dtype=np.float32)},
                           tmp_path / "good.safetensors")
    assert load_state_dict_into(cell, load_checkpoint_file(good)) == ["weight", "bias"]
    np.testing.assert_array_equal(cell.weight.asnumpy(), np.full((4, 3), 0.5, np.float32))
    assert cell.weight.dtype == original.dtype or str(cell.weight.dtype) == "Float32"


# --------------------------------------------------------------- convert_pt2ms
def _run_convert(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "MVDream"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.e2e
def test_convert_tiny_checkpoint(tmp_path, parity_dir, tiny_state_dict):
    for suffix in (".ckpt", ".safetensors"):
        out = tmp_path / f"tiny{suffix}"
        proc = _run_convert("--src", parity_dir / "tiny_mvdream.pt", "--trgt", out)
        assert proc.returncode == 0, proc.stderr
        assert "676 tensors" in proc.stdout and "6,207,500 values" in proc.stdout and str(out) in proc.stdout
        back = load_checkpoint_file(out)
        assert set(back) == set(tiny_state_dict)
        if suffix == ".ckpt":
            assert list(back) == list(tiny_state_dict)
        for key, value in tiny_state_dict.items():
            assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
            np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.e2e
def test_convert_failure_leaves_nothing(tmp_path, parity_dir):
    names = _bad_file_cases(tmp_path, parity_dir)
    before = set(os.listdir(tmp_path))
    for name in ("truncated.pt", "garbage.pt", "missing.pt"):
        proc = _run_convert("--src", tmp_path / name, "--trgt", tmp_path / "out.ckpt")
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and str(tmp_path / name) in lines[-1]
    proc = _run_convert("--src", parity_dir / "tiny_mvdream.pt", "--trgt", tmp_path / "out.bin")
    assert proc.returncode != 0 and "out.bin" in proc.stderr
    assert set(os.listdir(tmp_path)) == before and "missing.pt" in names


@pytest.mark.e2e
def test_converted_checkpoints_build_the_same_model(tmp_path, parity_dir):
    """.pt -> convert_pt2ms -> .ckpt / .safetensors -> build_model: identical UNet, VAE and text outputs."""
    from mindspore import Tensor
    from mvdream.model_zoo import build_model

    unet = np.load(parity_dir / "unet_tiny.npz")
    vae = np.load(parity_dir / "vae_tiny.npz")
    config = parity_dir / "tiny_mvdream.yaml"

    def outputs(ckpt):
        model = build_model(None, ckpt_path=ckpt, config_path=config)
        cond = {"context": Tensor(unet["context"]), "camera": Tensor(unet["camera"]), "num_frames": 4}
        return [model.apply_model(Tensor(unet["x"]), Tensor(unet["timesteps"]), cond).asnumpy(),
                model.decode_first_stage(Tensor(vae["z"])).asnumpy(),
                model.get_learned_conditioning(["a chair"]).asnumpy()]

    reference = outputs(parity_dir / "tiny_mvdream.pt")
    for suffix in (".ckpt", ".safetensors"):
        out = tmp_path / f"tiny{suffix}"
        assert _run_convert("--src", parity_dir / "tiny_mvdream.pt", "--trgt", out).returncode == 0
        for got, want in zip(outputs(out), reference):  # same weights: equal to fp32 rounding
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.e2e
def test_convert_refuses_to_replace_and_cleans_up_on_a_full_disk(tmp_path, parity_dir):
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"an earlier result")
    proc = _run_convert("--src", parity_dir / "tiny_mvdream.pt", "--trgt", out)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {out} exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"an earlier result"
    # a target that cannot be created (a virtual filesystem): one line, before reading the input
    proc = _run_convert("--src", parity_dir / "tiny_mvdream.pt", "--trgt", "/proc/out.ckpt")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: /proc/out.ckpt")

    def limit_file_size():  # a full disk: writes past 1 MB fail with EFBIG (SIGXFSZ ignored)
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "MVDream"), os.environ.get("PYTHONPATH", "")]))
    for suffix in (".ckpt", ".safetensors"):
        target = tmp_path / f"full{suffix}"
        proc = subprocess.run([sys.executable, str(CONVERT), "--src", str(parity_dir / "tiny_mvdream.pt"), "--trgt",
                               str(target), "--overwrite", "--no-progress"], capture_output=True, text=True, env=env,
                              timeout=300, preexec_fn=limit_file_size)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {target}"), proc.stderr
        assert "CRITICAL" not in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ckpt"]
    # --overwrite replaces the file
    proc = _run_convert("--src", parity_dir / "tiny_mvdream.pt", "--trgt", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert len(load_checkpoint_file(out)) == 676

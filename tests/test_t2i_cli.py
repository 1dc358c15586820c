"""scripts/t2i.py end to end on the tiny PyTorch checkpoint, and its one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "MVDream" / "scripts" / "t2i.py"


def _run(*args, env_extra=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO / "MVDream"), MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=600)


@pytest.fixture(scope="module")
def tiny_args(parity_dir):
    return ["--config_path", parity_dir / "tiny_mvdream.yaml", "--ckpt_path", parity_dir / "tiny_mvdream.pt",
            "--size", 16, "--steps", 3, "--n_samples", 2, "--no_progress"]


def test_t2i_writes_grid_and_views_deterministically(tmp_path, tiny_args):
    first = _run(*tiny_args, "--output", tmp_path / "a.png")
    assert first.returncode == 0, first.stderr
    grid = np.asarray(Image.open(tmp_path / "a.png"))
    assert grid.shape == (2 * 16, 4 * 16, 3)
    views = [np.asarray(Image.open(tmp_path / f"a_r0_v{v}.png")) for v in range(4)]
    assert all(v.shape == (16, 16, 3) for v in views)
    np.testing.assert_array_equal(np.concatenate(views, axis=1), grid[:16])
    assert all(np.abs(views[0].astype(int) - v.astype(int)).sum() > 0 for v in views[1:]), "views are identical"
    assert str(tmp_path / "a.png") in first.stdout

    # Same seed -> same bytes; an existing file is not overwritten silently.
    second = _run(*tiny_args, "--output", tmp_path / "a.png")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "a_1.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert "a_1.png" in second.stdout


@pytest.mark.parametrize("extra, message", [
    (["--size", 12], "--size must be a positive multiple of 8"),
    (["--size", 0], "--size must be a positive multiple of 8"),
    (["--num_frames", 0], "--num_frames must be >= 1"),
    (["--output", "/proc/forbidden/x.png"], "--output"),
    (["--seed", -1], "--seed must be in 0.."),
    (["--scale", "nan"], "--scale must be a finite number, got nan"),
    (["--scale", "inf"], "--scale must be a finite number, got inf"),
    (["--camera_elev", "nan"], "--camera_elev must be a finite number"),
    (["--steps", "nan"], "error: argument --steps: invalid int value: 'nan'"),
    (["--steps", 0], "--steps must be in 1..1000"),
    (["--config_path", "{tmp}/garbage.yaml"], "is not a model config"),
    (["--config_path", "{tmp}/list.yaml"], "is not a model config"),
])
def test_t2i_bad_arguments_give_one_line_errors(tmp_path, tiny_args, extra, message):
    (tmp_path / "garbage.yaml").write_bytes(b"\x00\xff\xfe: [garbage")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    extra = [str(a).replace("{tmp}", str(tmp_path)) for a in extra]
    args = [a for a in tiny_args] + ["--output", tmp_path / "x.png"] + extra
    proc = _run(*args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.glob("*.png"))


def test_t2i_offline_without_weights_names_file_and_flag(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    proc = _run("--output", tmp_path / "x.png", "--steps", 1, env_extra=env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "sd-v2.1-base-4view.pt" in proc.stderr and "--ckpt_path" in proc.stderr
    assert "huggingface.co/MVDream/MVDream" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_t2i_unknown_model_name(tmp_path):
    proc = _run("--model_name", "sd-v9-8view", "--output", tmp_path / "x.png")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "sd-v2.1-base-4view" in proc.stderr  # lists the valid names


def test_t2i_fp16_runs_and_stays_close_to_fp32(tmp_path, tiny_args):
    args = list(tiny_args) + ["--n_samples", 1]  # the last --n_samples wins
    assert _run(*args, "--output", tmp_path / "fp32.png").returncode == 0
    proc = _run(*args, "--fp16", "--output", tmp_path / "fp16.png")
    assert proc.returncode == 0, proc.stderr
    a = np.asarray(Image.open(tmp_path / "fp32.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "fp16.png")).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 3.0

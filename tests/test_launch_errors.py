"""Bad input to launch.py: one line `error: ...` on stderr, exit code != 0, nothing in outputs/."""
import os
from pathlib import Path

import pytest

from launch_helpers import launch_main, run_launch, tiny_config

PROMPT = "system.prompt_processor.prompt=a cat"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error_line(capsys, argv) -> str:
    code = launch_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err and err[-1].startswith("error: "), err
    return err[-1]


def _nothing_created(root: Path):
    assert not (root / "outputs").exists() or not any((root / "outputs").rglob("*"))


@pytest.mark.parametrize("extra, expected", [
    ([], 'system.prompt_processor.prompt is missing; set it on the command line: '
         'system.prompt_processor.prompt="a cat"'),
    ([PROMPT, "system.loss.lambda_sparsty=1"], "unknown config key 'lambda_sparsty'"),
    ([PROMPT, "trainer.max_stepz=3"], "unknown config key 'max_stepz'"),
    ([PROMPT, "foo=1"], "unknown config key 'foo'"),
    ([PROMPT, "resume=missing/last.ckpt"], "checkpoint not found: missing/last.ckpt"),
    ([PROMPT, "data.batch_size=[6,4]"], "batch_size 6 is not divisible by n_view 4"),
])
def test_bad_train_inputs(workdir, capsys, extra, expected):
    line = _error_line(capsys, ["--config", tiny_config(workdir), "--train", *extra])
    assert expected in line
    _nothing_created(workdir)


def test_bad_flags_and_files(workdir, capsys):
    config = tiny_config(workdir)
    assert "--train_highres continues a low-resolution run: give resume=" in _error_line(
        capsys, ["--config", config, "--train", "--train_highres", PROMPT])
    assert "config file not found: nope.yaml" in _error_line(capsys, ["--config", "nope.yaml", "--train", PROMPT])
    assert "--test needs a checkpoint" in _error_line(capsys, ["--config", config, "--test", PROMPT])
    assert "checkpoint not found: x.ckpt" in _error_line(capsys, ["--config", config, "--export", "resume=x.ckpt", PROMPT])
    assert "--export needs a checkpoint" in _error_line(capsys, ["--config", config, "--export", PROMPT])
    (workdir / "corrupt.ckpt").write_bytes(os.urandom(256))
    assert "corrupt.ckpt is not a readable MindSpore checkpoint" in _error_line(
        capsys, ["--config", config, "--test", "resume=corrupt.ckpt", PROMPT])
    _nothing_created(workdir)


@pytest.mark.e2e
def test_foreign_checkpoint_subprocess(workdir):
    """A real process: a checkpoint from another model config is refused with exit code 1."""
    config = tiny_config(workdir)
    small = [PROMPT, "trainer.max_steps=1", "data.width=[8,8]", "data.height=[8,8]", "data.n_val_views=1",
             "data.eval_height=8", "data.eval_width=8", "data.n_test_views=1", "system.renderer.num_samples_per_ray=4"]
    r = run_launch(["--config", config, "--train", *small], cwd=workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    (ckpt,) = list(workdir.glob("outputs/*/*/ckpts/last.ckpt"))
    n_trials = len(list(workdir.glob("outputs/*/*")))
    r = run_launch(["--config", config, "--test", f"resume={ckpt}", *small, "system.renderer.num_samples_per_ray=5"],
                   cwd=workdir)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines[-1] == (f"error: {ckpt} was written for a different model: its "
                                               "system.renderer config differs from this run's")
    assert "Traceback" not in r.stderr
    assert len(list(workdir.glob("outputs/*/*"))) == n_trials

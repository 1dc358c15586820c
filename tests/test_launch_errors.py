"""Bad input to launch.py: one line `error: ...` on stderr, exit code != 0, nothing in outputs/."""
import os
from pathlib import Path

import pytest

import launch_helpers
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
                                               "system.renderer config differs from this run's "
                                               "(renderer.num_samples_per_ray: 4 in the checkpoint, 5 here)")
    assert "Traceback" not in r.stderr
    assert len(list(workdir.glob("outputs/*/*"))) == n_trials


def test_more_bad_inputs_are_one_line_before_any_work(workdir, capsys):
    """Inputs that used to give a traceback (and sometimes an empty trial folder)."""
    config = tiny_config(workdir)
    (workdir / "afile").write_text("x")
    (workdir / "garbage.yaml").write_bytes(b"\x00\xff\xfe: [garbage")
    (workdir / "list.yaml").write_text("- a\n- b\n")
    cases = [
        (["--config", config, "--train", PROMPT, "data.width=[0,0]"], "data.width must be a positive integer"),
        (["--config", config, "--train", PROMPT, "data.height=[32,-8]"], "data.height must be a positive integer"),
        (["--config", config, "--train", PROMPT, "exp_root_dir=afile"], "afile is a file, not a folder; set exp_root_dir="),
        (["--config", "garbage.yaml", "--train", PROMPT], "cannot read config garbage.yaml"),
        (["--config", "list.yaml", "--train", PROMPT], "config list.yaml is not a mapping of keys"),
        (["--config", config, "--train", PROMPT, "trainer.precision=8"], "trainer.precision must be 32 or 16-mixed"),
        (["--config", config, "--train", PROMPT, "seed=-1"], "seed must be in 0..4294967295, got -1"),
        (["--config", config, "--train", PROMPT, "trainer.max_steps=0"], "trainer.max_steps must be >= 1"),
        (["--train", "--frobnicate"], "argument '--frobnicate' is neither a flag nor a key=value override"),
        (["--config", config, PROMPT], "one of the arguments --train --test --export is required"),
    ]
    for argv, expected in cases:
        line = _error_line(capsys, argv)
        assert expected in line, (argv, line)
    _nothing_created(workdir)


def test_copied_checkpoint_without_trial_folder_asks_for_config(workdir, capsys):
    (workdir / "copied.ckpt").write_bytes(b"not read: the config is chosen first")
    for mode in ("--test", "--export", "--train"):
        line = _error_line(capsys, [mode, "resume=copied.ckpt"])
        assert line == ("error: copied.ckpt is not inside a trial folder (<trial>/ckpts/ next to "
                        "<trial>/configs/parsed.yaml): pass the run's config with --config <config.yaml>")
    _nothing_created(workdir)


def test_default_config_falls_back_to_the_example_prompt(workdir, capsys):
    """No --config and no prompt: the default config takes the README's example prompt (checked
    by parsing only: trainer.max_steps=-1 stops before any model is built)."""
    code = launch_main(["--train", "trainer.max_steps=-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == "error: set trainer.max_steps"
    assert ('no prompt given: using the example prompt "an astronaut riding a horse"; set your own with '
            'system.prompt_processor.prompt="a cat"') in err[0]
    # a config without a default prompt (the tiny config has `prompt: ???`) keeps requiring one
    line = _error_line(capsys, ["--config", tiny_config(workdir), "--train", "trainer.max_steps=1"])
    assert line.startswith("error: system.prompt_processor.prompt is missing")
    from threestudio.utils.experiment import DEFAULT_PROMPT, load_experiment
    cfg, _, _ = load_experiment(str(launch_helpers.THREESTUDIO / "configs" / "mvdream-sd21.yaml"), [],
                                fallback_prompt=DEFAULT_PROMPT)
    assert cfg.system["prompt_processor"]["prompt"] == DEFAULT_PROMPT and cfg.tag == "an_astronaut_riding_a_horse"
    _nothing_created(workdir)

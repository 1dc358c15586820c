"""End to end: launch.py --train (stops at the milestone), --train --train_highres resume=, --test."""
import pytest
import csv
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import yaml

from launch_helpers import run_launch, tiny_config
from threestudio.utils.checkpoint import load_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = ["system.prompt_processor.prompt=a small cat", "exp_root_dir=outputs", "trainer.max_steps=4",
         "data.resolution_milestones=[2]", "data.width=[16,24]", "data.height=[16,24]",
         "data.eval_height=16", "data.eval_width=16", "data.n_val_views=1", "data.n_test_views=3",
         "trainer.val_check_interval=2", "system.renderer.num_samples_per_ray=16"]


def _trials(root: Path):
    return sorted(p for p in (root / "outputs").glob("*/*") if p.is_dir())


def test_train_lowres_then_highres_then_test(tmp_path):
    config = tiny_config(tmp_path)
    # stage 1: stops at the milestone (step 2) with a checkpoint
    r = run_launch(["--config", config, "--train", *SMALL], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (trial,) = _trials(tmp_path)
    assert trial.name.startswith("a_small_cat@") and trial.parent.name == "mvdream-tiny"
    for rel in ("configs/raw.yaml", "configs/parsed.yaml", "ckpts/step2.ckpt", "ckpts/last.ckpt",
                "save/it2-val/0.png", "metrics.csv", "log.txt"):
        assert (trial / rel).is_file(), rel
    assert not (trial / "ckpts/step4.ckpt").exists()
    assert "--train_highres" in r.stderr and "milestone 2" in r.stderr
    arrays, meta = load_checkpoint(str(trial / "ckpts/last.ckpt"))
    assert meta["global_step"] == 2 and meta["datamodule_rng"] and "guidance" in meta["rng"]
    assert any(k.startswith("optimizer.m.geometry.encoding") for k in arrays)
    assert not any(".guidance." in k or k.startswith("state.guidance") for k in arrays)
    parsed = yaml.safe_load((trial / "configs/parsed.yaml").read_text())
    assert parsed["trial_dir"] == str(Path("outputs") / trial.parent.name / trial.name)
    with open(trial / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2] and all(np.isfinite(float(r["loss"])) for r in rows)

    # stage 2: from the checkpoint to max_steps at the high resolution, in a new trial dir
    ckpt = trial / "ckpts/last.ckpt"
    before = ckpt.read_bytes()
    r = run_launch(["--config", config, "--train", "--train_highres", f"resume={ckpt}", *SMALL], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt.read_bytes() == before  # the first trial is untouched
    new = [t for t in _trials(tmp_path) if t != trial]
    assert len(new) == 1
    trial2 = new[0]
    _, meta = load_checkpoint(str(trial2 / "ckpts/step4.ckpt"))
    assert meta["global_step"] == 4 and not (trial2 / "ckpts/step2.ckpt").exists()
    assert imageio.imread(trial2 / "save/it4-val/0.png").shape == (16, 32, 3)  # rgb | opacity
    frames = sorted((trial2 / "save/it4-test").glob("*.png"))
    assert len(frames) == 3 and (trial2 / "save/it4-test.mp4").stat().st_size > 0

    # --test of the final checkpoint, with a gif
    r = run_launch(["--config", config, "--test", "--gif", f"resume={trial2 / 'ckpts/last.ckpt'}", *SMALL],
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    trial3 = [t for t in _trials(tmp_path) if t not in (trial, trial2)][0]
    frames3 = sorted((trial3 / "save/it4-test").glob("*.png"))
    assert [f.name for f in frames3] == ["0.png", "1.png", "2.png"]
    assert (trial3 / "save/it4-test.gif").is_file() and not (trial3 / "ckpts/last.ckpt").exists()
    # same checkpoint, same deterministic eval render
    np.testing.assert_array_equal(imageio.imread(frames3[1]), imageio.imread(frames[1]))

"""The documented workflow needs no --config after the first run: resume=<trial>/ckpts/<ckpt>
takes that trial's configs/parsed.yaml (key=value overrides on top; an explicit --config wins)
for --train --train_highres, --test and --export. Subprocesses on the tiny config."""
from pathlib import Path

import pytest
import trimesh
import yaml

from launch_helpers import TINY, run_launch
from threestudio.utils.checkpoint import load_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STAGE1 = ["system.prompt_processor.prompt=a small cat", "trainer.max_steps=4", "data.resolution_milestones=[2]",
          "data.width=[8,16]", "data.height=[8,16]", "data.eval_height=8", "data.eval_width=8", "data.n_val_views=1",
          "data.n_test_views=2", "trainer.val_check_interval=1000", "system.renderer.num_samples_per_ray=8",
          "system.geometry.isosurface_resolution=16"]


def _trials(root: Path):
    return sorted(p for p in (root / "outputs").glob("*/*") if p.is_dir())


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    r = run_launch(["--config", str(TINY), "--train", *STAGE1], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    (trial,) = _trials(root)
    assert f"python launch.py --train --train_highres resume={trial.relative_to(root)}/ckpts/last.ckpt" in r.stderr
    return root, trial


def test_highres_test_and_export_without_config(stage1):
    root, trial = stage1
    rel = trial.relative_to(root)
    raw_before = (trial / "configs" / "raw.yaml").read_text()

    r = run_launch(["--train", "--train_highres", f"resume={rel}/ckpts/step2.ckpt"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"[INFO] config: {rel}/configs/parsed.yaml (the run of resume={rel}/ckpts/step2.ckpt" in r.stderr
    assert _trials(root) == [trial]  # the same trial folder continues
    _, meta = load_checkpoint(str(trial / "ckpts" / "step4.ckpt"))
    assert meta["global_step"] == 4
    assert (trial / "configs" / "raw.yaml").read_text() == raw_before
    assert (trial / "configs" / "raw-resume-1.yaml").is_file()
    first_video = trial / "save" / "it4-test.mp4"
    assert first_video.is_file()
    video_bytes = first_video.read_bytes()

    r = run_launch(["--test", f"resume={rel}/ckpts/last.ckpt"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{rel}/save/it4-test exists; this test writes to {rel}/save-1 instead" in r.stderr
    assert (trial / "save-1" / "it4-test.mp4").stat().st_size > 0 and first_video.read_bytes() == video_bytes
    assert len(list((trial / "save-1" / "it4-test").glob("*.png"))) == 2

    # an override on top of the trial's config
    r = run_launch(["--export", f"resume={rel}/ckpts/last.ckpt", "system.exporter.fmt=ply"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    mesh = trimesh.load(trial / "save" / "it4-export" / "model.ply", process=False, force="mesh")
    assert len(mesh.faces) > 0
    r = run_launch(["--export", f"resume={rel}/ckpts/last.ckpt", "system.exporter.fmt=ply"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{rel}/save/it4-export/model.ply exists; writing {rel}/save/it4-export/model-1.ply instead" in r.stderr
    assert (trial / "save" / "it4-export" / "model-1.ply").is_file()
    assert _trials(root) == [trial]


def test_explicit_config_wins(stage1):
    root, trial = stage1
    # the shipped tiny config with the same model keys: a new trial folder named by its own tag
    r = run_launch(["--config", str(TINY), "--test", f"resume={trial / 'ckpts' / 'step2.ckpt'}", *STAGE1,
                    "system.prompt_processor.prompt=another prompt"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[INFO] config:" not in r.stderr
    new = [t for t in _trials(root) if t != trial]
    assert [t.name.split("@")[0] for t in new] == ["another_prompt"]
    parsed = yaml.safe_load((new[0] / "configs" / "parsed.yaml").read_text())
    assert parsed["system"]["prompt_processor"]["prompt"] == "another prompt"
    assert (new[0] / "save" / "it2-test.mp4").is_file()

"""The 3D app's run logic without a browser: what a trial folder says, what Resume runs next, and
which client input is refused (webapp_runs.py, mvdream.webapp)."""
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import webapp_runs as runs
from mvdream.webapp import OutsideRootError, resolve_under


def make_trial(root, metrics_steps=(), ckpts=(), last_of=None, video=None, val=None, glb=None,
               milestones=(10,), max_steps=20):
    trial = Path(root) / "mvdream-tiny" / "a_cat@20260101-000000"
    for sub in ("configs", "ckpts", "save"):
        (trial / sub).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"trainer": {"max_steps": max_steps},
                                     "data": {"resolution_milestones": list(milestones)},
                                     "system": {"prompt_processor": {"prompt": "a cat"},
                                                "geometry": {"isosurface_resolution": 64}}}),
                   trial / "configs" / "parsed.yaml")
    if metrics_steps:
        rows = ["step,loss,steps_per_s"] + [f"{s},{100.0 / s},0.5" for s in metrics_steps]
        (trial / "metrics.csv").write_text("\n".join(rows) + "\n")
    for step in ckpts:
        (trial / "ckpts" / f"step{step}.ckpt").write_bytes(b"x" * step)
    if last_of is not None:
        last = trial / "ckpts" / "last.ckpt"
        last.write_bytes(b"x" * last_of)
        twin = trial / "ckpts" / f"step{last_of}.ckpt"
        if twin.exists():
            os.utime(last, (twin.stat().st_mtime, twin.stat().st_mtime))
        else:  # saved on interrupt, later than any step<N>.ckpt
            os.utime(last, (last.stat().st_mtime + 60, last.stat().st_mtime + 60))
    if val is not None:
        (trial / "save" / f"it{val}-val").mkdir()
        for i in (0, 1, 10, 2):
            (trial / "save" / f"it{val}-val" / f"{i}.png").write_bytes(b"png")
    if video is not None:
        (trial / "save" / f"it{video}-test.mp4").write_bytes(b"mp4")
    if glb is not None:
        (trial / "save" / f"it{glb}-export").mkdir()
        (trial / "save" / f"it{glb}-export" / "model.glb").write_bytes(b"glb")
    return trial


def test_resume_plans_follow_the_two_stage_recipe(tmp_path):
    # cancelled in stage 1 after launch.py saved on SIGINT: continue stage 1
    trial = make_trial(tmp_path, metrics_steps=range(1, 7), last_of=6)
    label, script, argv = runs.plan_next(trial)
    assert script == runs.LAUNCH and "--train_highres" not in argv and label == "training (from step 6)"
    assert f"resume={trial / 'ckpts' / 'last.ckpt'}" in argv and str(trial / "configs" / "parsed.yaml") in argv


def test_resume_after_the_milestone_runs_stage_2(tmp_path):
    # stopped at the milestone (step10 + last written together), then cancelled at 13 without a save
    trial = make_trial(tmp_path, metrics_steps=range(1, 14), ckpts=(10,), last_of=10)
    assert runs.latest_checkpoint(trial)[0] == 10
    label, _, argv = runs.plan_next(trial)
    assert argv[2] == "--train_highres" and label == "stage 2 (from step 10)"


def test_finished_training_renders_then_exports_then_is_complete(tmp_path):
    trial = make_trial(tmp_path, metrics_steps=range(1, 21), ckpts=(10, 20), last_of=20, val=20)
    assert runs.plan_next(trial)[0] == "rendering the turntable video"
    (trial / "save" / "it20-test.mp4").write_bytes(b"mp4")
    label, script, argv = runs.plan_next(trial)
    assert script == runs.EXPORTER and argv[argv.index("--output") + 1].endswith("it20-export/model.glb")
    assert argv[argv.index("--resolution") + 1] == "64"
    (trial / "save" / "it20-export").mkdir()
    (trial / "save" / "it20-export" / "model.glb").write_bytes(b"glb")
    assert runs.plan_next(trial) is None
    art = runs.artifacts(trial)
    assert art["video_step"] == 20 and art["ckpt_step"] == 20
    assert [Path(p).name for p in art["val_images"]] == ["0.png", "1.png", "2.png", "10.png"]


def test_run_without_checkpoint_cannot_resume(tmp_path):
    trial = make_trial(tmp_path, metrics_steps=(1, 2))
    with pytest.raises(runs.RunError, match="no checkpoint to resume from"):
        runs.plan_next(trial)


def test_progress_reports_step_rate_and_eta_to_the_stage_end(tmp_path):
    trial = make_trial(tmp_path, metrics_steps=range(1, 5), last_of=None)
    prog = runs.progress(trial)
    assert prog["step"] == 4 and prog["max_steps"] == 20 and prog["stage_end"] == 10
    assert prog["eta_s"] == pytest.approx((10 - 4) / 0.5)


@pytest.mark.parametrize("text, message", [
    ("trainer.max_steps", "is not key=value"),
    ("resume=/etc/passwd", "set by the page"),
    ("exp_root_dir=/", "set by the page"),
    ("--verbose", "is not key=value"),
])
def test_bad_overrides_are_refused(text, message):
    with pytest.raises(runs.RunError, match=message):
        runs.parse_overrides(text)


def test_new_run_command_is_validated_and_confined(tmp_path):
    argv = runs.train_command("mvdream-tiny.yaml", "a ../../etc/x", "", 6, 1, "trainer.val_check_interval=3\n",
                              tmp_path)
    assert "tag=a_etc_x" in argv and f"exp_root_dir={tmp_path}" in argv and argv[-1] == "trainer.val_check_interval=3"
    with pytest.raises(runs.RunError, match="prompt is empty"):
        runs.train_command("mvdream-tiny.yaml", "  ", "", 6, 1, "", tmp_path)
    with pytest.raises(runs.RunError, match="unknown config"):
        runs.train_command("../../etc/passwd", "a cat", "", 6, 1, "", tmp_path)


def test_client_paths_are_resolved_inside_the_outputs_folder(tmp_path):
    root = tmp_path / "outputs"
    (root / "a" / "b").mkdir(parents=True)
    assert resolve_under(root, "a/b") == (root / "a" / "b").resolve()
    assert resolve_under(root, str(root / "a")) == (root / "a").resolve()
    (root / "link").symlink_to(tmp_path)  # looks inside, points outside
    for bad in ("../", "a/../../x", "/etc/passwd", "link/x", "", "a\x00b"):
        with pytest.raises(OutsideRootError):
            resolve_under(root, bad)

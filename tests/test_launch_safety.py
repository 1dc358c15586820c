"""launch.py --train never loses work, run as a user runs it (subprocesses): a non-finite loss
stops the run and keeps the last good checkpoint (or is skipped on request), Ctrl-C saves at the
step boundary and resumes exactly, a kill or a full disk during a checkpoint write leaves no
temporary files, and any prompt gives a trial folder inside exp_root_dir."""
import csv
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from launch_helpers import LAUNCH, REPO, THREESTUDIO, TINY, run_launch
from threestudio.utils.checkpoint import load_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = "system.prompt_processor.prompt=a cat"
# the tiny config at 8x8 renders, no validation, one test view: seconds per run
SMALL = ["--config", str(TINY), "data.width=[8,8]", "data.height=[8,8]", "data.eval_height=8", "data.eval_width=8",
         "data.n_val_views=1", "data.n_test_views=1", "trainer.val_check_interval=1000",
         "system.renderer.num_samples_per_ray=8"]
# lambda_sds = 1 up to step 2, 1e38 from step 3 (0-based): the loss of the 4th step overflows to inf
EXPLODE = "system.loss.lambda_sds=[2,1.0,1.0e38,3]"


def _env():
    return dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3",
                PYTHONPATH=os.pathsep.join([str(THREESTUDIO), str(REPO / "MVDream"), os.environ.get("PYTHONPATH", "")]))


def _popen(args, cwd, **kwargs):
    return subprocess.Popen([sys.executable, "-W", "ignore", str(LAUNCH), *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _trial(root: Path) -> Path:
    (trial,) = [p for p in (root / "outputs").glob("*/*") if p.is_dir()]
    return trial


def _temporaries(root: Path):
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _last_line(stderr: str) -> str:
    return stderr.replace("\r", "\n").strip().splitlines()[-1]


def _params(ckpt: Path):
    """Trained parameters (those with optimizer moments) of a checkpoint."""
    arrays, meta = load_checkpoint(str(ckpt))
    names = [k[len("optimizer.m."):] for k in arrays if k.startswith("optimizer.m.")]
    assert names
    return {n: arrays[f"state.{n}"] for n in names}, arrays, meta


def _wait_for_rows(metrics: Path, rows: int, proc, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if metrics.is_file() and len(metrics.read_text().strip().splitlines()) > rows:
            return
        time.sleep(0.05)
    raise AssertionError("training did not log in time")


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    r = run_launch([*SMALL, "--train", PROMPT, "trainer.max_steps=5", "checkpoint.every_n_train_steps=1", EXPLODE],
                   cwd=tmp_path)
    line = _last_line(r.stderr)
    assert r.returncode == 1, r.stderr[-2000:]
    trial = _trial(tmp_path)
    ckpts = trial / "ckpts"
    assert re.fullmatch(r"error: step 4: non-finite loss \(loss(_sds)? = (inf|nan)\); training stopped; the last good "
                        rf"checkpoint is {re.escape(str(Path('outputs') / trial.parent.name / trial.name / 'ckpts' / 'step3.ckpt'))} "
                        r"\(trainer.skip_nonfinite_steps=true skips such steps\)", line), line
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step1.ckpt", "step2.ckpt", "step3.ckpt"]
    params, arrays, meta = _params(ckpts / "last.ckpt")
    assert meta["global_step"] == 3
    assert all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")
    step3, _, _ = _params(ckpts / "step3.ckpt")
    for name, value in params.items():
        np.testing.assert_array_equal(value, step3[name])  # the same file content
    assert not list((trial / "save").glob("*test*")) and not _temporaries(tmp_path)


def test_skip_nonfinite_steps_option(tmp_path):
    r = run_launch([*SMALL, "--train", PROMPT, "trainer.max_steps=5", "checkpoint.every_n_train_steps=1", EXPLODE,
                    "trainer.skip_nonfinite_steps=true"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("step skipped (trainer.skip_nonfinite_steps)") == 2
    assert "skipped 2 of 5 steps with a non-finite loss or gradient" in r.stderr
    trial = _trial(tmp_path)
    with open(trial / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["skipped_steps"]) for r in rows] == [0, 0, 0, 1, 2]
    assert [r["loss"] == "" for r in rows] == [False, False, False, True, True]
    final, arrays, meta = _params(trial / "ckpts" / "last.ckpt")
    step3, arrays3, _ = _params(trial / "ckpts" / "step3.ckpt")
    assert meta["global_step"] == 5 and all(np.isfinite(v).all() for v in final.values())
    for name, value in final.items():  # skipped steps leave the parameters and Adam's state alone
        np.testing.assert_array_equal(value, step3[name], err_msg=name)
    np.testing.assert_array_equal(arrays["optimizer.global_step"], arrays3["optimizer.global_step"])
    assert (trial / "save" / "it5-test.mp4").is_file()


def test_sigint_saves_at_the_step_boundary_and_resume_is_exact(tmp_path):
    args = [*SMALL, "--train", PROMPT, "trainer.max_steps=6"]
    ref = tmp_path / "ref"
    ref.mkdir()
    r = run_launch(args, cwd=ref)
    assert r.returncode == 0, r.stderr[-3000:]

    run = tmp_path / "run"
    run.mkdir()
    proc = _popen(args, run)
    while not list(run.glob("outputs/*/*/metrics.csv")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    trial = _trial(run)
    _wait_for_rows(trial / "metrics.csv", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    line = _last_line(err)
    assert proc.returncode == 130, err[-2000:]
    m = re.fullmatch(r"error: interrupted by SIGINT after step (\d); saved (\S+) \(continue with: "
                     r"python launch.py --train resume=(\S+)\)", line)
    assert m and m.group(2) == m.group(3) == str(Path("outputs") / trial.parent.name / trial.name / "ckpts" / "last.ckpt")
    step = int(m.group(1))
    assert 2 <= step < 6 and "Traceback" not in err
    _, _, meta = _params(trial / "ckpts" / "last.ckpt")
    assert meta["global_step"] == step and not _temporaries(run)

    # resume as the message says (no --config: the trial's own parsed.yaml)
    r = run_launch(["--train", f"resume={m.group(2)}"], cwd=run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"config: {trial.relative_to(run) / 'configs' / 'parsed.yaml'}" in r.stderr
    assert (trial / "configs" / "raw-resume-1.yaml").is_file()
    got, _, meta = _params(trial / "ckpts" / "last.ckpt")
    want, _, ref_meta = _params(_trial(ref) / "ckpts" / "last.ckpt")
    assert meta["global_step"] == ref_meta["global_step"] == 6
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_second_signal_exits_at_once_without_temporaries(tmp_path):
    proc = _popen([*SMALL, "--train", PROMPT, "trainer.max_steps=50"], tmp_path)
    while not list(tmp_path.glob("outputs/*/*/metrics.csv")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    _wait_for_rows(_trial(tmp_path) / "metrics.csv", 1, proc)
    proc.send_signal(signal.SIGTERM)
    err = b""
    while b"send it again to stop at once" not in err:  # the first one is acknowledged at once
        chunk = os.read(proc.stderr.fileno(), 65536)
        assert chunk, err.decode()[-2000:]
        err += chunk
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    err = (err + rest).decode()
    assert proc.returncode == 143, err[-2000:]
    assert _last_line(err) == "error: interrupted by SIGTERM"
    assert not _temporaries(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-step run (also compiles the hash-grid kernel before the file-size limit)."""
    root = tmp_path_factory.mktemp("trained")
    r = run_launch([*SMALL, "--train", PROMPT, "trainer.max_steps=2"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, _trial(root)


KILLED_WRITER = """
import sys, numpy as np
from threestudio.utils.checkpoint import save_checkpoint
save_checkpoint(sys.argv[1], {"x": np.ones((64, 1024, 1024), np.float32)}, {"global_step": 0})
"""


def test_kill_during_checkpoint_write_then_resume(trained):
    root, trial = trained
    ckpts = trial / "ckpts"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(ckpts / "step99.ckpt")], env=_env(),
                              stderr=subprocess.PIPE)
    while not _temporaries(ckpts):  # MindSpore's own scratch name, .step99.ckpt.<pid>.tmp.tmp
        assert writer.poll() is None, writer.communicate()[1][-2000:]
        time.sleep(0.01)
    writer.kill()
    writer.wait()
    left = [p.name for p in _temporaries(ckpts)]
    assert left and all(re.fullmatch(rf"\.step99\.ckpt\.{writer.pid}\.tmp\.(tmp|ckpt)", n) for n in left), left
    assert not (ckpts / "step99.ckpt").exists()

    r = run_launch(["--train", f"resume={ckpts / 'last.ckpt'}", "trainer.max_steps=3"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _temporaries(root)
    _, _, meta = _params(ckpts / "last.ckpt")
    assert meta["global_step"] == 3


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_full_disk_gives_one_line_and_no_partial_files(trained, tmp_path):
    _ = trained  # the kernel cache is built
    r = subprocess.run([sys.executable, "-W", "ignore", str(LAUNCH), *SMALL, "--train", PROMPT,
                        "trainer.max_steps=1", "checkpoint.every_n_train_steps=1"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit_file_size)
    assert r.returncode == 1, r.stderr[-3000:]
    trial = _trial(tmp_path)
    line = _last_line(r.stderr)
    assert line == f"error: could not write {Path('outputs') / trial.parent.name / trial.name / 'ckpts' / 'step1.ckpt'}: File too large", line
    assert "Traceback" not in r.stderr and "CRITICAL" not in r.stderr
    assert not list((trial / "ckpts").iterdir()) and not _temporaries(tmp_path)


@pytest.mark.parametrize("prompt", [
    b"../../../escape ../x",
    b"a " + b"very " * 1000 + b"long prompt",
    b"caf\xe9 \xff\xfe not utf-8 / ..",
], ids=["traversal", "5000-characters", "not-utf-8"])
def test_any_prompt_gives_a_trial_folder_inside_exp_root_dir(tmp_path, prompt):
    root = tmp_path / "runs"
    args = [sys.executable, "-W", "ignore", str(LAUNCH), *SMALL, "--train", "trainer.max_steps=1",
            f"exp_root_dir={root}", b"system.prompt_processor.prompt=" + prompt]
    r = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    (trial,) = [p for p in root.glob("*/*") if p.is_dir()]
    assert trial.parent.parent == root and len(trial.name) <= 96 + 9 + 16
    assert re.fullmatch(r"[A-Za-z0-9._+,=-]+-[0-9a-f]{8}@\d{8}-\d{6}", trial.name), trial.name
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert [p for p in tmp_path.rglob("*") if p.is_dir() and root not in p.parents and p != root] == []
    raw = yaml.safe_load((trial / "configs" / "raw.yaml").read_text(encoding="utf-8"))
    assert raw["system"]["prompt_processor"]["prompt"] == prompt.decode("utf-8", "replace")

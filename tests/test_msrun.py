"""launch.py under ``msrun`` on loopback (2 CPU processes): data-parallel training equals one
process, prompt lists shared by ranks and resumed, and the launcher's failure modes."""
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from launch_helpers import TINY, run_launch
from msrun_helpers import LAUNCH, alive, run_msrun, start_msrun, stop_msrun, wait_for, worker_pids

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# 2 view groups of n_view 4; stop at the milestone after 3 steps (no test video); occupancy grid
# re-estimated at steps 0 and 2, the second time from randomly drawn cells (NumPy's global stream)
DP_ARGS = ["--config", TINY, "--train", 'system.prompt_processor.prompt="a cat"', "data.batch_size=[8,8]",
           "data.resolution_milestones=[3]", "system.renderer.grid_update_interval=2",
           "system.renderer.grid_warmup_steps=1", "trainer.val_check_interval=100",
           "trainer.enable_progress_bar=false"]


def _only_trial(root: Path) -> Path:
    trials = [p for p in (root / "mvdream-tiny").iterdir() if p.name != "prompt_lists"]
    assert len(trials) == 1, trials
    return trials[0]


def test_two_ranks_train_the_same_parameters_as_one_process(tmp_path, monkeypatch):
    from threestudio.utils.checkpoint import load_checkpoint

    # MindSpore's own norm/activation ops on both sides. Each sample's forward is bitwise the same
    # in a half batch (tests/test_cpu_kernels.py), but the hash-grid gradient of the whole batch
    # and the AllReduced sum of two halves add in another order (87% of the table's entries
    # differ, up to 0.75% relative where contributions cancel), and Adam's m / sqrt(v) magnifies
    # that past 1e-5 on near-zero entries: with the fused kernels 3.4e-5 on 6 of 32768 entries,
    # with MindSpore's ops below 1e-5 (its numbers happen to put no entry that close to zero).
    monkeypatch.setenv("MVDREAM_CPU_KERNELS", "0")

    one = run_launch(DP_ARGS + [f"exp_root_dir={tmp_path / 'one'}"], cwd=tmp_path, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    rc, out = run_msrun(LAUNCH, DP_ARGS + [f"exp_root_dir={tmp_path / 'two'}"], tmp_path, tmp_path / "logs")
    assert rc == 0, out[-3000:]

    trial_one, trial_two = _only_trial(tmp_path / "one"), _only_trial(tmp_path / "two")  # rank 1 wrote nothing
    a, meta_a = load_checkpoint(str(trial_one / "ckpts" / "last.ckpt"))
    b, meta_b = load_checkpoint(str(trial_two / "ckpts" / "last.ckpt"))
    assert meta_a["global_step"] == meta_b["global_step"] == 3
    assert sorted(a) == sorted(b)
    for key in a:  # parameters, Adam moments, occupancy grid
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(b["state.renderer.estimator.binaries"], a["state.renderer.estimator.binaries"])
    # every random stream ends where one process's does: resuming under any world size continues it
    assert json.dumps(meta_b["datamodule_rng"], sort_keys=True) == json.dumps(meta_a["datamodule_rng"], sort_keys=True)
    assert json.dumps(meta_b["rng"]["guidance"], sort_keys=True) == json.dumps(meta_a["rng"]["guidance"], sort_keys=True)
    assert repr(meta_b["rng"]["numpy"]) == repr(meta_a["rng"]["numpy"])
    # the logged loss is the mean over ranks: the whole batch's loss
    loss = [np.loadtxt(t / "metrics.csv", delimiter=",", skiprows=1, usecols=1) for t in (trial_one, trial_two)]
    np.testing.assert_allclose(loss[1], loss[0], rtol=1e-5)
    assert "rank 1/2" in (tmp_path / "logs" / "worker_1.log").read_text()


LIST_ARGS = ["--config", TINY, "--train", "trainer.max_steps=20", "data.resolution_milestones=[1]",
             "trainer.enable_progress_bar=false"]
PROMPTS = ["a red apple", "a blue car", "a green frog", "a wooden chair", "a yellow duck"]


def _records(state: Path):
    out = {}
    for path in (state / "status").glob("*.json"):
        record = json.loads(path.read_text())
        out[record["prompt"]] = record
    return out


def test_prompt_list_is_shared_by_two_ranks_and_resumes_after_a_kill(tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    root = tmp_path / "out"
    args = LIST_ARGS + ["--prompts_file", "prompts.txt", f"exp_root_dir={root}"]
    state = root / "mvdream-tiny" / "prompt_lists" / "prompts.txt"

    proc = start_msrun(LAUNCH, args, tmp_path, tmp_path / "logs1")
    try:
        def two_done():
            return sum(r["status"] == "done" for r in _records(state).values()) >= 2
        assert wait_for(two_done, 600), "no prompt finished"
    finally:
        first_out = stop_msrun(proc)
    first = _records(state)
    done_first = {p: r for p, r in first.items() if r["status"] == "done"}
    assert 2 <= len(done_first) < len(PROMPTS), first_out[-3000:]

    rc, out = run_msrun(LAUNCH, args, tmp_path, tmp_path / "logs2")
    assert rc == 0, out[-3000:]
    final = _records(state)
    assert sorted(final) == sorted(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        record = final[prompt]
        assert record["status"] == "done" and record["rank"] == i % 2, record  # rank r: prompts r, r+2, ...
        assert (Path(record["output"]) / "ckpts" / "last.ckpt").is_file()
    for prompt, record in done_first.items():  # not run again
        assert final[prompt] == record
        tag = prompt.replace(" ", "_")
        assert len([p for p in (root / "mvdream-tiny").iterdir() if p.name.startswith(tag + "@")]) == 1
    rows = (state / "summary.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["prompt", "status", "output"]
    assert [r.split("\t")[:2] for r in rows[1:]] == [[p, "done"] for p in PROMPTS]


def test_world_size_that_does_not_divide_the_groups_is_one_line_per_rank(tmp_path):
    # the tiny config's batch is 4 views = 1 group of n_view 4: it cannot be split over 2 ranks
    args = ["--config", TINY, "--train", 'system.prompt_processor.prompt="a cat"', f"exp_root_dir={tmp_path / 'out'}"]
    rc, out = run_msrun(LAUNCH, args, tmp_path, tmp_path / "logs", node_timeout=5)
    assert rc != 0
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    # the scheduler adds one line of its own: a worker left early (that worker's line says why)
    scheduler = [line for line in errors if line.startswith("error: msrun scheduler: ")]
    assert len(scheduler) <= 1 and all(re.search(r"worker [01] ", line) for line in scheduler), scheduler
    rank_errors = [line for line in errors if line not in scheduler]
    assert rank_errors, out[-3000:]
    for line in rank_errors:
        assert re.fullmatch(r"error: rank [01]: data\.batch_size 4 is 1 view group of n_view 4, which 2 ranks "
                            r"cannot share .*", line), line
    assert "Traceback" not in "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))  # workers, scheduler
    assert not (tmp_path / "out").exists()  # before any work: no trial folder


def test_a_crashing_rank_ends_the_run_and_is_named(tmp_path):
    args = DP_ARGS + ["trainer.max_steps=500", "data.resolution_milestones=[400]", f"exp_root_dir={tmp_path / 'out'}"]
    logs = tmp_path / "logs"
    proc = start_msrun(LAUNCH, args, tmp_path, logs, node_timeout=5)
    try:
        assert wait_for(lambda: len(worker_pids(logs)) == 2 and "optimising" in (logs / "worker_1.log").read_text(),
                        300), "the ranks did not start"
        pids = worker_pids(logs)
        os.kill(pids[1], signal.SIGKILL)  # e.g. the kernel's OOM killer
        proc.wait(180)
    finally:
        out = stop_msrun(proc)
    assert proc.returncode != 0
    assert wait_for(lambda: not alive(pids[0]), 30), "rank 0 survived its peer"
    # msrun names the process that failed; launch.py's first log line maps it to its rank
    assert f"rank 1/2 (pid {pids[1]})" in out and f"Worker process {pids[1]} exit with exception" in out, out[-3000:]


def test_t2i_prompt_list_is_shared_by_two_ranks(tmp_path, parity_dir):
    from msrun_helpers import T2I

    (tmp_path / "p.txt").write_text("a red apple\na blue car\na green frog\n")
    args = ["--config_path", parity_dir / "tiny_mvdream.yaml", "--ckpt_path", parity_dir / "tiny_mvdream.pt",
            "--size", 16, "--steps", 2, "--n_samples", 1, "--no_progress", "--prompts_file", "p.txt",
            "--output", "previews/list.png"]
    rc, out = run_msrun(T2I, args, tmp_path, tmp_path / "logs")
    assert rc == 0, out[-3000:]
    records = _records(tmp_path / "previews" / "list")
    assert sorted(records) == ["a blue car", "a green frog", "a red apple"]
    for i, prompt in enumerate(["a red apple", "a blue car", "a green frog"]):
        assert records[prompt]["status"] == "done" and records[prompt]["rank"] == i % 2
        assert (tmp_path / records[prompt]["output"]).is_file()
    assert len([p for p in (tmp_path / "previews" / "list").glob("*.png") if "_r0_v" not in p.name]) == 3

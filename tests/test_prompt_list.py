"""Prompt lists (mvdream.prompt_list) and the data-parallel batch split
(threestudio.utils.distributed), in-process; --prompts_file of launch.py and t2i.py end to end
in one process (the msrun runs are in test_msrun.py)."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from launch_helpers import TINY, run_launch
from msrun_helpers import T2I, msrun_env
from mvdream.prompt_list import (PromptListError, PromptListState, list_outcome, rank_share, read_prompts,
                                 read_summary, run_prompt_list)
from mvdream.ranks import Ranks


def test_read_prompts_skips_blanks_and_comments_and_keeps_one_of_each(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n  # not a prompt\n a dog \na cat\na cat, sitting: on a mat\n")
    prompts, duplicates = read_prompts(path)
    assert prompts == ["a cat", "a dog", "a cat, sitting: on a mat"]
    assert duplicates == ["a cat"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("", "has no prompts"),
    ("\n# only a comment\n\n", "has no prompts"),
    (b"\xff\xfe a cat", "is not UTF-8 text"),
    ("dir", "cannot be read"),
])
def test_bad_prompts_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "p.txt"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PromptListError, match=message) as err:
        read_prompts(path)
    assert "\n" not in str(err.value) and "--prompts_file" in str(err.value)


@pytest.mark.parametrize("n, world", [(5, 1), (5, 2), (5, 3), (2, 4), (8, 8)])
def test_ranks_share_a_list_without_overlap(n, world):
    prompts = [f"p{i}" for i in range(n)]
    shares = [rank_share(prompts, Ranks(r, world)) for r in range(world)]
    assert sorted(sum(shares, [])) == sorted(prompts)
    assert all(len(s) in (n // world, -(-n // world)) for s in shares)


def test_a_failing_prompt_is_recorded_and_the_list_resumes(tmp_path):
    state = PromptListState(tmp_path / "list")
    prompts = ["ok one", "bad", "ok two"]
    calls = []

    def run_one(prompt):
        calls.append(prompt)
        if prompt == "bad":
            raise ValueError("this prompt fails\nsecond line")
        return f"out/{prompt}"

    logger = logging.getLogger("test_prompt_list")
    records = run_prompt_list(prompts, Ranks(), state, run_one, logger)
    assert calls == prompts
    assert [r["status"] for r in records] == ["done", "failed", "done"]
    rows = read_summary(tmp_path / "list" / "summary.tsv")
    assert [(r["prompt"], r["status"], r["output"], r["error"]) for r in rows] == [
        ("ok one", "done", "out/ok one", ""), ("bad", "failed", "", "this prompt fails"), ("ok two", "done", "out/ok two", "")]
    assert list_outcome(records, Ranks(), tmp_path)[0] == 1
    assert list_outcome(records, Ranks(0, 2), tmp_path)[0] == 0  # msrun would stop the other ranks

    calls.clear()  # re-running runs only what is not done
    run_prompt_list(prompts, Ranks(), state, run_one, logger)
    assert calls == ["bad"]
    assert not [p for p in (tmp_path / "list").rglob("*") if p.name.endswith(".tmp")]


def test_rank_shares_of_a_batch_are_the_one_process_batch():
    """Cameras of 2 groups drawn once and split by group: the ranks' batches are the rows of
    the one-process batch, and every rank's generator ends where the one process's does."""
    import threestudio
    from threestudio.utils.experiment import load_experiment

    cfg, _, _ = load_experiment(TINY, ['system.prompt_processor.prompt="x"', "data.batch_size=[8,8]"])
    modules = [threestudio.find(cfg.data_type)(cfg.data, seed=3, rank=r, world_size=w)
               for r, w in ((0, 1), (0, 2), (1, 2))]
    for dm in modules:
        dm.setup()
    for step in range(3):
        whole, *parts = [dm.train_dataset.collate_next(step) for dm in modules]
        for key, value in whole.items():
            if key in ("height", "width"):
                assert all(p[key] == value for p in parts)
                continue
            np.testing.assert_array_equal(np.concatenate([p[key].asnumpy() for p in parts]), value.asnumpy(), key)
        assert [p["shard"].rank for p in parts] == [0, 1] and "shard" not in whole
    states = [json.dumps(dm.get_rng_state(), sort_keys=True) for dm in modules]
    assert states[0] == states[1] == states[2]


def test_shard_draws_are_rows_of_the_whole_draw():
    from threestudio.utils.distributed import BatchShard

    whole_rng, *rank_rngs = [np.random.default_rng(7) for _ in range(3)]
    whole = whole_rng.standard_normal((8, 3))
    parts = [BatchShard(r, 2).draw(rng.standard_normal, (4, 3)) for r, rng in enumerate(rank_rngs)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    after = whole_rng.random()
    assert all(rng.random() == after for rng in rank_rngs)  # every generator advanced as one process's


def test_world_size_must_divide_the_view_groups():
    import threestudio
    from threestudio.utils.config import ConfigError
    from threestudio.utils.experiment import load_experiment

    cfg, _, _ = load_experiment(TINY, ['system.prompt_processor.prompt="x"', "data.batch_size=[8,4]",
                                       "data.resolution_milestones=[10]"])
    dm = threestudio.find(cfg.data_type)(cfg.data, rank=0, world_size=2)
    dm.check_world_size(0, 10)  # the first stage (2 groups) splits; a run that stops at the milestone is fine
    dm.check_world_size(3, 10)
    for start, stop in ((0, 11), (10, 20)):
        with pytest.raises(ConfigError, match=r"data.batch_size 4 is 1 view group of n_view 4, which 2 ranks "
                                              r"cannot share .* multiple of n_view x ranks = 8"):
            dm.check_world_size(start, stop)


@pytest.mark.e2e
@pytest.mark.parametrize("content", ["", None])
def test_launch_bad_prompts_file_is_one_line_before_any_work(tmp_path, content):
    if content is not None:
        (tmp_path / "p.txt").write_text(content)
    proc = run_launch(["--config", TINY, "--train", "--prompts_file", "p.txt", f"exp_root_dir={tmp_path / 'out'}"],
                      cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: --prompts_file p.txt ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_t2i_prompts_file_previews_each_distinct_prompt_once_and_resumes(tmp_path, parity_dir):
    (tmp_path / "p.txt").write_text("a red apple\na blue car\na red apple\n")
    args = [sys.executable, str(T2I), "--config_path", parity_dir / "tiny_mvdream.yaml", "--ckpt_path",
            parity_dir / "tiny_mvdream.pt", "--size", 16, "--steps", 2, "--n_samples", 1, "--no_progress",
            "--prompts_file", "p.txt", "--output", "previews/list.png"]

    def run():
        return subprocess.run(list(map(str, args)), cwd=tmp_path, env=msrun_env(), capture_output=True, text=True,
                              timeout=600)

    first = run()
    assert first.returncode == 0, first.stderr
    assert first.stderr.strip() == "warning: 1 prompt(s) appear more than once in p.txt and run once: a red apple"
    out = tmp_path / "previews" / "list"
    rows = read_summary(out / "summary.tsv")
    assert [(r["prompt"], r["status"]) for r in rows] == [("a red apple", "done"), ("a blue car", "done")]
    grids = sorted(p.name for p in out.glob("*.png") if "_r0_v" not in p.name)
    assert len(grids) == 2 and all((out / g).stat().st_size > 0 for g in grids)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}

    second = run()
    assert second.returncode == 0, second.stderr
    assert "2 already done" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps

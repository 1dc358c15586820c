"""The training benchmark runs the real Trainer step and prints one JSON row per stage (numbers
are printed, never asserted on time)."""
import json
import os
import re
import subprocess
import sys

import pytest

from launch_helpers import REPO

pytestmark = [pytest.mark.bench, pytest.mark.e2e]


def test_bench_train_tiny_prints_a_row_per_stage():
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3")
    r = subprocess.run([sys.executable, "-W", "ignore", str(REPO / "tools" / "bench_train.py"), "--tiny", "--iters", "1",
                        "--warmup", "0", "--precision", "fp32"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows and all(row["precision"] == "fp32" and row["total_s"] > 0 for row in rows)
    for row in rows:
        assert re.fullmatch(r"\d+x\d+", row["render"]) and row["batch"] >= 1
        parts = [row[k] for k in ("render_s", "vae_encode_s", "unet_s") if k in row]
        assert parts and all(p >= 0 for p in parts) and sum(parts) <= row["total_s"] + 1e-3


def test_bench_norm_act_prints_a_row_per_kernel_and_shape():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench_norm_act.py"), "--quick", "--repeats", "1",
                        "--against-rev", "HEAD"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    kernels = [row["kernel"] for row in rows[:-1]]
    assert sorted(set(kernels)) == sorted(f"{k}_{d}" for k in ("group_norm", "layer_norm", "gelu", "geglu")
                                          for d in ("fwd", "bwd"))
    assert all(row["this_cpu_ms"] >= 0 and row["HEAD_cpu_ms"] >= 0 for row in rows[:-1])
    assert "load_average" in rows[-1]


def test_bench_norm_act_names_a_missing_revision_in_one_line():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench_norm_act.py"), "--against-rev", "no-such-rev"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: no MVDream/mvdream/kernels/norm_act.cc at revision 'no-such-rev'; pass an existing one with --against-rev"]

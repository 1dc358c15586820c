"""Reduced ablation of view-dependent colour (tools/ablate_viewdep.py, seed 0, 150 steps of 1024
rays): xyz-only vs ``dir_encoding_config`` on the Blinn-Phong scene and its Lambertian control.

Measured (README, "View-dependent colour", 3 seeds at 400 steps): neither option beats the
xyz-only NeRF on the specular scene (dir-encoding +0.02 dB, per seed +0.28 / -0.07 / -0.14;
neural-radiance-material -0.7 dB), so no gain is asserted here. What is asserted: the scene's
view-dependent highlight costs the xyz-only NeRF held-out PSNR (>= 1.5 dB below the Lambertian
control; measured 2.6 dB here at seed 0 and 150 steps, 5.0-5.9 dB on each seed at 400 steps),
and the direction input does not hurt the Lambertian control (within 0.5 dB; measured +0.9 dB
here, +1.12 / -0.14 / +0.82 at 400 steps).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_specular_scene_is_view_dependent_and_dir_encoding_keeps_the_lambertian_control():
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ablate_viewdep.py"), "--seeds", "0",
                           "--steps", "150", "--rays", "1024", "--variants", "xyz-only,dir-encoding", "--jobs", "2"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)
    psnr = {(r["scene"], r["variant"]): r["psnr"]
            for r in map(json.loads, (line for line in proc.stdout.splitlines() if line.startswith("{")))}
    assert len(psnr) == 4 and "| specular | xyz-only |" in proc.stdout  # the table is printed
    assert psnr["specular", "xyz-only"] <= psnr["lambertian", "xyz-only"] - 1.5
    assert psnr["lambertian", "dir-encoding"] >= psnr["lambertian", "xyz-only"] - 0.5

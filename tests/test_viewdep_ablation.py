"""Ablation of view-dependent colour (tools/ablate_viewdep.py; scene and fits in specular_scene.py).

``test_dir_encoding_beats_xyz_only_on_the_specular_scene`` reruns seed 0 of the README table
(700 steps of 1024 rays, xyz-only and dir-encoding). Measured, 3 seeds (README,
"View-dependent colour"): on the specular scene xyz-only 30.40 +- 0.09 dB, dir-encoding
30.88 +- 0.26 dB held-out PSNR; the gain per seed is +0.76 / +0.37 / +0.31 dB (seed 0: 30.46 vs
31.22 dB). Asserted margin: dir-encoding >= xyz-only + 0.25 dB on the specular scene, below the
smallest per-seed gain (0.31) and ~3x xyz-only's seed spread (0.09), so that a change which
removes the direction input's effect fails it. It fits the specular scene only (2 fits at once,
106 s on a quiet 2-core machine; the control 38 s).

``test_dir_encoding_keeps_the_lambertian_control``: on the Lambertian control the direction input
does not hurt (within 0.5 dB of xyz-only; 100 steps to keep CI short: seed 0 +0.70 dB there; 3 seeds
at 700 steps: +0.53 dB). The highlight itself costs xyz-only 6.75 dB against the control (3 seeds,
700 steps, README table).

``test_direction_input_fits_a_colour_that_depends_on_the_view_alone`` is the wiring check: a
sphere coloured by the view direction alone (``render_direction_colour``) is fitted by
dir-encoding and not by xyz-only (200 steps of 512 rays, held-out: 33.57 vs 21.49 dB; asserted
>= 30 dB and >= 6 dB apart). It fails if the renderer stops passing each sample's direction.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specular_scene import fit_variant

ROOT = Path(__file__).resolve().parents[1]
MARGIN_DB = 0.25


def ablate(scene: str, steps: int) -> dict:
    """Held-out PSNR of xyz-only and dir-encoding on one scene, seed 0 (tools/ablate_viewdep.py)."""
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ablate_viewdep.py"), "--seeds", "0",
                           "--scenes", scene, "--steps", str(steps), "--rays", "1024",
                           "--variants", "xyz-only,dir-encoding", "--jobs", "2"],
                          capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)
    assert f"| {scene} | xyz-only |" in proc.stdout  # the table is printed
    psnr = {r["variant"]: r["psnr"]
            for r in map(json.loads, (line for line in proc.stdout.splitlines() if line.startswith("{")))}
    assert sorted(psnr) == ["dir-encoding", "xyz-only"]
    return psnr


@pytest.mark.slow
@pytest.mark.e2e
def test_dir_encoding_beats_xyz_only_on_the_specular_scene():
    psnr = ablate("specular", 700)
    assert psnr["dir-encoding"] >= psnr["xyz-only"] + MARGIN_DB


@pytest.mark.slow
@pytest.mark.e2e
def test_dir_encoding_keeps_the_lambertian_control():
    # 100 steps keep CI short (seed 0: +0.70 dB there, +0.9 at 150); the 3-seed table checks the
    # same at 700 steps (+0.10..+0.81 dB)
    psnr = ablate("lambertian", 100)
    assert psnr["dir-encoding"] >= psnr["xyz-only"] - 0.5


@pytest.mark.slow
def test_direction_input_fits_a_colour_that_depends_on_the_view_alone():
    steps = 200
    xyz = fit_variant("direction", "xyz-only", steps=steps, rays=512)
    direction = fit_variant("direction", "dir-encoding", steps=steps, rays=512)
    print(f"held-out PSNR after {steps} steps: xyz-only {xyz['psnr']:.2f} dB, dir-encoding {direction['psnr']:.2f} dB")
    assert direction["psnr"] >= 30.0
    assert direction["psnr"] >= xyz["psnr"] + 6.0

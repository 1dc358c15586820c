"""Ablation of view-dependent colour (tools/ablate_viewdep.py; scene and fits in specular_scene.py).

``test_dir_encoding_beats_xyz_only_on_the_specular_scene`` reruns seed 0 of the README table
(700 steps of 1024 rays, xyz-only and dir-encoding, both scenes). Measured, 3 seeds (README,
"View-dependent colour"): on the specular scene xyz-only 30.40 +- 0.09 dB, dir-encoding
30.88 +- 0.26 dB held-out PSNR; the gain per seed is +0.76 / +0.37 / +0.31 dB (seed 0: 30.46 vs
31.22 dB). Asserted margin: dir-encoding >= xyz-only + 0.25 dB on the specular scene, below the
smallest per-seed gain (0.31) and ~3x xyz-only's seed spread (0.09), so that a change which
removes the direction input's effect fails it. Also asserted: the highlight costs xyz-only held-out
PSNR (>= 1.5 dB below the Lambertian control; seed 0: 6.45 dB, 3 seeds: 6.75 dB), and the
direction input does not hurt the control (within 0.5 dB; seed 0: +0.81 dB, 3 seeds: +0.53 dB).

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


@pytest.mark.slow
@pytest.mark.e2e
def test_dir_encoding_beats_xyz_only_on_the_specular_scene():
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ablate_viewdep.py"), "--seeds", "0",
                           "--steps", "700", "--rays", "1024", "--variants", "xyz-only,dir-encoding", "--jobs", "2"],
                          capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)
    psnr = {(r["scene"], r["variant"]): r["psnr"]
            for r in map(json.loads, (line for line in proc.stdout.splitlines() if line.startswith("{")))}
    assert len(psnr) == 4 and "| specular | xyz-only |" in proc.stdout  # the table is printed
    assert psnr["specular", "dir-encoding"] >= psnr["specular", "xyz-only"] + MARGIN_DB
    assert psnr["specular", "xyz-only"] <= psnr["lambertian", "xyz-only"] - 1.5
    assert psnr["lambertian", "dir-encoding"] >= psnr["lambertian", "xyz-only"] - 0.5


@pytest.mark.slow
def test_direction_input_fits_a_colour_that_depends_on_the_view_alone():
    steps = 200
    xyz = fit_variant("direction", "xyz-only", steps=steps, rays=512)
    direction = fit_variant("direction", "dir-encoding", steps=steps, rays=512)
    print(f"held-out PSNR after {steps} steps: xyz-only {xyz['psnr']:.2f} dB, dir-encoding {direction['psnr']:.2f} dB")
    assert direction["psnr"] >= 30.0
    assert direction["psnr"] >= xyz["psnr"] + 6.0

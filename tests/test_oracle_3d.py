"""The x0-SDS loop, run as a user runs it, builds the 3D object its (oracle) teacher has in mind.

The real weights cannot run here, so the UNet is replaced by an oracle teacher that knows a
ground-truth scene (``oracle_teacher.BoxSphereScene``: a sphere and a box, per-face colours,
ray-traced exactly in NumPy). For every batch the data module draws, the teacher renders the
scene from the batch's own cameras, encodes it with the guidance's VAE and makes the UNet predict
the noise whose x0 is those latents (both CFG halves). With this perfect, multiview-consistent
denoiser, x0-SDS is a regression onto the scene's latents from whatever cameras come up.

Everything else is the tiny config's real system, built as launch.py builds it and trained by
``Trainer.fit``: ``mvdream-system``, ``implicit-volume`` (hash grid), ``no-material``, learned
``neural-environment-map-background``, ``nerf-volume-renderer`` (occupancy grid, stratified
samples), ``random-multiview-camera-datamodule`` (random elevation, azimuth, fovy, distance)
with a two-stage resolution switch (16x16 renders upsampled to the guidance's 32x32 like
MVDream's 64 -> 256, then 32x32), the guidance's annealed timestep range and std rescale
(a no-op with identical CFG halves), and the system's AdamW.

Scored on 8 held-out cameras (azimuths between the training ones' spread, elevations 5-28 deg,
64x64 over white; latents of the 2x2-averaged images at the guidance's 32x32): latent distance
(VAE posterior means), RGB PSNR, and the Chamfer distance from the exporter's mesh
(the mesh-exporter, the geometry's isosurface settings) to the scene's surface.
A negative control gives each view the target of a different random scene of the same family.

Measured (150 steps, 2 shared cores; wall time 22-26 min per run under a load average of
~60, CPU ~1.2 s a step): seed 0 held-out latent 3.935 -> 2.462 (-37%), PSNR 12.4 -> 20.2 dB,
latent-cell PSNR 12.8 -> 22.3 dB, Chamfer 0.307 -> 0.098; seed 1 latent 4.135 -> 1.836 (-56%),
PSNR 12.3 -> 20.3 dB, latent-cell PSNR 12.9 -> 23.2 dB, Chamfer 0.304 -> 0.128; negative control
(seed 0): latent -5%, PSNR 13.7 dB, latent-cell PSNR 14.4 dB, Chamfer 0.129 (the mean of random
scenes is a blob of the same size: Chamfer alone does not tell them apart; the latents do).
The issue's target (held-out latent distance -80%) is NOT reached: the
reduction flattens after ~100 steps (seed 0: -31% at 50, -33% at 100, -37% at 150). Object-pixel
PSNR stays 11-14 dB: the random VAE sees 4 numbers per 12 pixel values, so patterns inside a
latent cell are barely constrained; the latent-cell means are the proxy that the loss does see.

Set-up choices:
  * MVDream's random background colour (half the batches, one colour per batch) is drawn by the
    teacher's data wrapper and passed as the batch's ``bg_color`` (``system.background.random_aug``
    off), so the teacher composites the scene over the very background of the training render;
    otherwise the teacher composites over the system's learned environment map;
  * the teacher casts one ray through each pixel centre, as the renderer does, so the scene
    itself is an exact solution; the metric averages 2x2 rays a pixel on both sides alike;
  * the scene lies inside the initial density blob (radius ~0.5): the occupancy grid and the
    alpha threshold never sample far outside it, so density cannot grow there (true of real
    runs too);
  * the tiny VAE's posterior is sharpened (``sharpen_vae_posterior``) to a trained VAE's regime;
  * the camera closer than the tiny config's (relative distance 0.55-0.7 instead of 0.8-1.0): at
    16x16 and 32x32 the object would be a few pixels wide, mostly aliased silhouette;
  * learning rates above the tiny config's (hash grid 0.1 vs 0.01, MLPs 0.03 vs 0.001):
    MVDream trains 10,000 steps, this test affords STEPS.
"""
import csv
import os
import time

import numpy as np
import pytest
from mindspore import Tensor

from launch_helpers import build_tiny
from oracle_teacher import (BoxSphereScene, OracleUNet, SceneTeacher, TeacherDataset, encode_mean,
                            render_views, sharpen_vae_posterior)
from threestudio.data.uncond import make_camera_batch
from test_mesh_export import extract
from threestudio.utils.ops import get_ray_directions, spherical_to_cartesian

STEPS, MILESTONE = 150, 40
LOW, HIGH, IMAGE = 16, 32, 32  # renders 16x16 (upsampled to the guidance's 32x32), then 32x32
# relative camera distance (the tiny config's [0.8, 1.0] leaves the object ~8 pixels wide at 16x16)
DISTANCE = (0.55, 0.7)
OVERRIDES = [
    "system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false", "trainer.val_check_interval=0",
    f"data.width=[{LOW},{HIGH}]", f"data.height=[{LOW},{HIGH}]", "data.batch_size=[4,4]",
    f"data.resolution_milestones=[{MILESTONE}]", f"trainer.max_steps={STEPS}",
    f"data.camera_distance_range=[{DISTANCE[0]},{DISTANCE[1]}]",
    f"system.guidance.image_size={IMAGE}",
    "system.guidance.vae_grad_chunk_size=0",  # 4 small images: one piece is cheaper on CPU
    "system.background.random_aug=false",  # drawn by TeacherDataset, which must know the colour
    "system.optimizer.params[geometry.encoding].lr=0.1",
    "system.optimizer.params[geometry.density_network].lr=0.03",
    "system.optimizer.params[geometry.feature_network].lr=0.03",
    "system.optimizer.params.background.lr=0.01",
]
WHITE = np.float32([1, 1, 1])
N_HELD_OUT = 8


def held_out_batch(size=2 * HIGH):
    """8 cameras: azimuths 22.5 + 45k deg, elevations 5-28 deg, fovy 40, mid training distance."""
    elevation = np.float32([5, 12, 20, 28] * 2)
    azimuth = (np.arange(N_HELD_OUT) * 45.0 + 22.5).astype(np.float32)
    fovy = np.full(N_HELD_OUT, 40.0, np.float32)
    distance = (np.mean(DISTANCE) / np.tan(np.deg2rad(fovy / 2))).astype(np.float32)  # mid relative radius
    positions = spherical_to_cartesian(np.deg2rad(elevation), np.deg2rad(azimuth), distance)
    up = np.tile(np.float32([0, 0, 1]), (N_HELD_OUT, 1))
    return make_camera_batch(positions, np.zeros_like(positions), up, positions, elevation, azimuth, distance,
                             fovy, get_ray_directions(size, size, 1.0))


def psnr(a, b):
    return float(-10 * np.log10(np.mean((a - b) ** 2)))


def held_out_scores(system, scene, batch):
    """Latent distance and PSNR of the learned field's held-out views (eval mode) against the scene's."""
    white = np.tile(WHITE, (N_HELD_OUT, 1))
    system.set_train(False)
    pred = system.renderer(**batch, bg_color=Tensor(white))["comp_rgb"].asnumpy()
    system.set_train(True)
    gt = render_views([scene] * N_HELD_OUT, batch, white)
    model, size = system.guidance.model, system.guidance.cfg.image_size
    latent = np.linalg.norm(encode_mean(model, pred, size).asnumpy() - encode_mean(model, gt, size).asnumpy())
    on_object = np.abs(gt - WHITE).max(-1) > 0
    # The random VAE sees 4 numbers per latent cell of 12 pixel values: patterns inside a cell are
    # partly invisible to the loss, so also compare the cells' mean colours (the footprint of a
    # latent cell is 2x2 pixels of the guidance image, i.e. (2 * size / image_size)^2 render pixels).
    k = 2 * pred.shape[1] // size
    cells = lambda x: x.reshape(N_HELD_OUT, x.shape[1] // k, k, x.shape[2] // k, k, 3).mean((2, 4))  # noqa: E731
    return {"latent": float(latent), "psnr": psnr(pred, gt), "object_psnr": psnr(pred[on_object], gt[on_object]),
            "cell_psnr": psnr(cells(pred), cells(gt))}


def chamfer(a, b):
    """Symmetric mean nearest-neighbour distance between point sets [N, 3] and [M, 3]."""
    from scipy.spatial import cKDTree  # a dependency of mindspore

    return float(0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()))


def mesh_chamfer(system, scene, rng):
    """Chamfer distance of the exporter's mesh (64^3, the geometry's threshold) to the scene's surface."""
    mesh, _ = extract(system.geometry, system.material, resolution=64)
    system.set_train(True)
    return chamfer(mesh.vertices, scene.surface_points(20000, rng))


def train_with_teacher(trial_dir, seed: int, consistent: bool = True) -> dict:
    t0 = time.time()
    _, dm, system, trainer = build_tiny(trial_dir, OVERRIDES + [f"seed={seed}"])
    guidance = system.guidance
    sharpen_vae_posterior(guidance.model)
    rng = np.random.default_rng(seed + 1000)
    scene = BoxSphereScene.random(rng)
    if consistent:
        scenes_for = lambda n, r: [scene] * n  # noqa: E731
    else:  # negative control: every view its own scene
        scenes_for = lambda n, r: [BoxSphereScene.random(r) for _ in range(n)]  # noqa: E731
    oracle = OracleUNet(guidance.model, guidance.cfg.n_view)
    guidance.model.model.diffusion_model = oracle
    dm.train_dataset = TeacherDataset(dm.train_dataset, SceneTeacher(guidance, scenes_for, rng), oracle,
                                      system.background, rng)
    batch = held_out_batch()

    # Initial scores: the field as the first training step renders it (occupancy grid warmed up).
    init = system.state_arrays()
    system.set_train(True)
    system.do_update_step(0, 0)
    start = held_out_scores(system, scene, batch)
    system.load_state_arrays(init)
    start["chamfer"] = mesh_chamfer(system, scene, rng)

    system.set_train(True)
    trainer.fit(system, dm, 0, STEPS)
    end = held_out_scores(system, scene, batch)
    end["chamfer"] = mesh_chamfer(system, scene, rng)
    with open(os.path.join(trial_dir, "metrics.csv")) as f:
        log = list(csv.DictReader(f))
    return {"start": start, "end": end, "calls": oracle.calls, "sizes": dm.train_dataset.sizes, "log": log,
            "seconds": time.time() - t0}


def report(name, r):
    s, e = r["start"], r["end"]
    print(f"{name}: held-out latent {s['latent']:.3f} -> {e['latent']:.3f} "
          f"({100 * (1 - e['latent'] / s['latent']):.1f}% reduction), PSNR {s['psnr']:.2f} -> {e['psnr']:.2f} dB "
          f"(object pixels {s['object_psnr']:.2f} -> {e['object_psnr']:.2f} dB, latent-cell means "
          f"{s['cell_psnr']:.2f} -> {e['cell_psnr']:.2f} dB), "
          f"Chamfer {s['chamfer']:.4f} -> {e['chamfer']:.4f}; {STEPS} steps, {r['seconds']:.0f} s", flush=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])  # seed 1 measured by hand (closing note); CI time
def test_x0_sds_with_oracle_teacher_builds_its_object(tmp_path, seed):
    r = train_with_teacher(tmp_path, seed)
    report(f"seed {seed}", r)
    # the loop a user runs: every step asked the UNet once, both resolutions were trained, the
    # timestep range annealed from [980, 980] to [20, 500] and every t was drawn inside it
    assert r["calls"] == STEPS
    assert sorted(set(r["sizes"])) == [LOW, HIGH] and r["sizes"][MILESTONE - 1:MILESTONE + 1] == [LOW, HIGH]
    first, last = r["log"][0], r["log"][-1]
    assert (float(first["train/min_step"]), float(first["train/max_step"])) == (980, 980)
    assert (float(last["train/min_step"]), float(last["train/max_step"])) == (20, 500)
    assert all(float(x["train/min_step"]) <= float(x["train/timestep"]) <= float(x["train/max_step"]) for x in r["log"])
    s, e = r["start"], r["end"]
    # measured (150 steps, seeds 0/1): latent 0.63/0.44 of its start, latent-cell PSNR 22.3/23.2 dB,
    # Chamfer 0.32/0.42 of its start; the negative control: 0.95, 14.4 dB (see the module doc)
    assert e["latent"] <= 0.75 * s["latent"]
    assert e["cell_psnr"] >= 19.0
    assert e["chamfer"] <= 0.5 * s["chamfer"]


@pytest.mark.slow
def test_inconsistent_teacher_does_not_build_an_object(tmp_path):
    """Negative control: the same harness with each view's target from a different random scene."""
    r = train_with_teacher(tmp_path, 0, consistent=False)
    report("negative control", r)
    assert r["calls"] == STEPS
    s, e = r["start"], r["end"]
    assert e["latent"] > 0.75 * s["latent"]
    assert e["cell_psnr"] < 19.0

"""By-hand diagnosis of the oracle test's plateau (figures in test_oracle_3d's module doc).

    MS_DEV_HOST_BLOCKING_RUN=1 python tests/oracle_plateau.py --seed 0 --steps 250 --every 50
    ... --mode rgb      the same system fitted by direct RGB supervision (no VAE, no SDS)
    ... --blur          only the metric's sensitivity: held-out latent distance of blurred ground truth
    ... --override KEY=VALUE   any config override on top of the test's (repeatable), e.g.
        'system.scheduler={name: ExponentialLR, interval: step, args: {gamma: 0.9885}}'

Prints, every ``--every`` steps, the held-out scores of test_oracle_3d plus: mean opacity over
the scene's background pixels (haze), 1 - opacity inside the scene's mask (hole), and the latent
distance with background / object / edge-band pixels replaced by the ground truth's; and the
latent distance with the held-out views rendered at 32x32, one ray through each pixel centre on
both sides (the training renders' sampling; ``_32px``), also with its edge band replaced.
The held-out views (learned field, ground truth, opacity) go to ``<trial-dir>/views_<tag>.npz``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "MVDream"), str(REPO / "MVDream-threestudio"), str(REPO / "tests")]

from mvdream.runtime import setup_runtime  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--mode", choices=("sds", "rgb"), default="sds")
    p.add_argument("--scale", type=float, default=None, help="scene size (default: the test's)")
    p.add_argument("--blur", action="store_true")
    p.add_argument("--distance", type=float, nargs=2, default=None, help="relative camera distance range "
                   "(training and held-out; default: the test's)")
    p.add_argument("--trial-dir", default="outputs/oracle_plateau")
    p.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    a = p.parse_args()
    setup_runtime("CPU")

    import numpy as np
    from mindspore import Tensor
    from scipy.ndimage import gaussian_filter

    import test_oracle_3d as T
    from launch_helpers import build_tiny
    from oracle_teacher import (BoxSphereScene, OracleUNet, SceneTeacher, TeacherDataset, encode_mean,
                                render_scene, render_views, sharpen_vae_posterior)

    if a.distance is not None:
        T.DISTANCE = tuple(a.distance)  # held_out_batch reads it
        a.override = [f"data.camera_distance_range=[{a.distance[0]},{a.distance[1]}]"] + a.override
    t0 = time.time()
    scale = T.SCENE_SCALE if a.scale is None else a.scale
    _, dm, system, trainer = build_tiny(a.trial_dir, T.OVERRIDES + [f"seed={a.seed}", f"trainer.max_steps={a.steps}"] + a.override)
    guidance = system.guidance
    sharpen_vae_posterior(guidance.model)
    rng = np.random.default_rng(a.seed + 1000)
    scene = BoxSphereScene.random(rng, scale)
    batch = T.held_out_batch()
    white = np.tile(T.WHITE, (T.N_HELD_OUT, 1))
    gt = render_views([scene] * T.N_HELD_OUT, batch, white)
    model, size = guidance.model, T.IMAGE  # the test's metric, also under an image_size override
    gt_latent = encode_mean(model, gt, size).asnumpy()

    def latent(images, reference=gt_latent):
        return float(np.linalg.norm(encode_mean(model, images, size).asnumpy() - reference))

    # the held-out cameras at the training renders' 32x32, one ray through each pixel centre (no 2x2 average)
    batch32 = T.held_out_batch(T.HIGH)
    gt32 = render_views([scene] * T.N_HELD_OUT, batch32, white)
    gt32_latent = encode_mean(model, gt32, size).asnumpy()

    if a.blur:
        exact = render_views([scene] * T.N_HELD_OUT, batch, white, supersample=4)
        gt_latent = encode_mean(model, exact, size).asnumpy()
        print("white image", round(latent(np.ones_like(exact), gt_latent), 4))
        print("one ray a pixel", round(latent(gt, gt_latent), 4))
        for sigma in (0.25, 0.5, 0.75, 1.0):
            blurred = gaussian_filter(exact, (0, sigma, sigma, 0))
            print(f"gaussian blur {sigma} px", round(latent(blurred, gt_latent), 4))
        exact32 = render_views([scene] * T.N_HELD_OUT, batch32, white, supersample=4)
        print("32x32: white image", round(latent(np.ones_like(gt32), gt32_latent), 4),
              "| 4x4 rays a pixel vs one ray a pixel", round(latent(exact32, gt32_latent), 4))
        for sigma in (0.25, 0.5):
            print(f"32x32: gaussian blur {sigma} px of one ray a pixel",
                  round(latent(gaussian_filter(gt32, (0, sigma, sigma, 0)), gt32_latent), 4))
        return

    oracle = OracleUNet(guidance.model, guidance.cfg.n_view)
    guidance.model.model.diffusion_model = oracle
    teacher = SceneTeacher(guidance, lambda n, r: [scene] * n, rng)
    if a.mode == "rgb":  # the guidance replaced by an RGB regression onto the teacher's images
        images = {}

        def rgb_latents(b, background):
            images["gt"] = Tensor(render_views([scene] * b["c2w"].shape[0], b, background))
            return encode_mean(model, images["gt"], size)

        def rgb_loss(rgb, prompt_utils, **kwargs):
            oracle.calls += 1
            d = rgb - images["gt"]
            return {"loss_sds": 0.5 * (d * d).sum() / rgb.shape[0]}

        teacher.latents, guidance.construct = rgb_latents, rgb_loss
    dm.train_dataset = TeacherDataset(dm.train_dataset, teacher, oracle, system.background, rng)
    mask = np.stack([render_scene(scene, batch["c2w"].asnumpy()[i], batch["fovy"].asnumpy()[i], 64, 64, 1)[1]
                     for i in range(T.N_HELD_OUT)]) > 0.5

    def edge_band(images):  # pixels next to a jump in the ground truth, dilated by one
        edge = np.zeros(images.shape[:3], bool)
        for axis in (1, 2):
            jump = np.abs(np.diff(images, axis=axis)).max(-1) > 0.02
            edge |= np.pad(jump, [(0, 1) if i == axis else (0, 0) for i in range(3)])
            edge |= np.pad(jump, [(1, 0) if i == axis else (0, 0) for i in range(3)])
        band = edge.copy()
        for axis in (1, 2):
            band |= np.roll(edge, 1, axis) | np.roll(edge, -1, axis)
        return band

    band, band32 = edge_band(gt), edge_band(gt32)

    def scores(tag):
        system.set_train(False)
        out = system.renderer(**batch, bg_color=Tensor(white))
        pred32 = system.renderer(**batch32, bg_color=Tensor(white))["comp_rgb"].asnumpy()
        system.set_train(True)
        pred, opacity = out["comp_rgb"].asnumpy(), out["opacity"].asnumpy()[..., 0]
        np.savez(Path(a.trial_dir) / f"views_{tag.replace(' ', '')}.npz", pred=pred, gt=gt, opacity=opacity)
        r = {"tag": tag, "latent": latent(pred), "psnr": T.psnr(pred, gt), "haze": float(opacity[~mask].mean()),
             "hole": float(1 - opacity[mask].mean()),
             "latent_bg_fixed": latent(np.where(mask[..., None], pred, gt)),
             "latent_object_fixed": latent(np.where(mask[..., None], gt, pred)),
             "latent_edges_fixed": latent(np.where(band[..., None], gt, pred)), "edge_fraction": float(band.mean()),
             "latent_32px": latent(pred32, gt32_latent),
             "latent_32px_edges_fixed": latent(np.where(band32[..., None], gt32, pred32), gt32_latent),
             "edge_fraction_32px": float(band32.mean()),
             "seconds": round(time.time() - t0)}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        return r

    init = system.state_arrays()
    system.set_train(True)
    system.do_update_step(0, 0)
    start = scores("start")
    system.load_state_arrays(init)
    system.set_train(True)
    step = 0
    while step < a.steps:
        stop = min(step + a.every, a.steps)
        trainer.fit(system, dm, step, stop)
        step = stop
        print(f"  step {step}: latent {scores(f'step {step}')['latent'] / start['latent']:.3f} of its start",
              flush=True)


if __name__ == "__main__":
    main()

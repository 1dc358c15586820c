"""Oracle teachers for x0-SDS tests: a diffusion "UNet" that knows the answer.

* ``OracleUNet`` replaces the guidance's UNet. For noisy latents x_t and timestep t it predicts
  the noise whose x0 reconstruction is the target latents it was handed (both CFG halves), so
  the guidance's x0 (CFG, std rescale) is exactly the target: x0-SDS becomes a regression of
  the render's latents onto the targets.
* ``BoxSphereScene`` is a ground-truth 3D scene (a sphere and a box with per-face colours),
  ray-traced exactly in float64 NumPy (``render_scene``), independent of the project's renderer.
* ``SceneTeacher`` turns a training batch into target latents: the scene rendered from the
  batch's own cameras, over the background the training render uses, encoded by the guidance's
  VAE (posterior means). ``TeacherDataset`` wraps the data module's training set so that each
  batch the trainer draws first hands its targets to the oracle.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
from mindspore import Tensor, nn, ops

from threestudio.utils.resize import resize_bilinear
from threestudio.utils.ops import get_ray_directions, get_rays


def sharpen_vae_posterior(model, logvar_shift: float = -12.0):
    """Shift the posterior log-variance of the (random) VAE by ``logvar_shift``.

    The tiny VAE's random weights give a posterior std (~1.1) larger than the spread of its
    means (~0.3), while a trained SD VAE is nearly deterministic; with a wide posterior,
    E|mean + std * eps - target|^2 = |mean - target|^2 + |std|^2 trades the distance for std."""
    bias = model.first_stage_model.quant_conv.bias
    bias.set_data(bias + Tensor(np.repeat(np.float32([0, logvar_shift]), bias.shape[0] // 2)))


def encode_mean(model, images, image_size: int) -> Tensor:
    """Scaled VAE posterior means of [B, H, W, 3] images in [0, 1] (no gradient)."""
    images = Tensor(np.asarray(images, np.float32)) if not isinstance(images, Tensor) else images
    bchw = resize_bilinear(ops.transpose(images, (0, 3, 1, 2)), image_size, image_size)
    return ops.stop_gradient(model.scale_factor * model.encode_first_stage(bchw * 2 - 1).mean)


class OracleUNet(nn.Cell):
    """eps such that predict_start_from_noise(x_t, t, eps) == target, i.e.
    eps = (sqrt(1/a_t) x_t - target) / sqrt(1/a_t - 1), for both CFG halves.

    ``set_target(latents, camera)`` hands over the targets of the next call; with ``camera``
    (the guidance's camera condition of the batch) each call checks that the UNet is asked
    about exactly those cameras, so targets and renders cannot get out of step."""

    def __init__(self, schedule, n_view, target=None):
        super().__init__()
        self.schedule, self.n_view = schedule, n_view
        self.target, self.camera = target, None
        self.calls = 0

    def set_target(self, target, camera=None):
        self.target, self.camera = target, camera

    def construct(self, x, timesteps, context=None, camera=None, num_frames=1, **kwargs):
        # The guidance must hand over both CFG halves with their cameras and views.
        n = self.target.shape[0]
        assert x.shape[0] == 2 * n == context.shape[0] == camera.shape[0]
        assert num_frames == self.n_view and camera.shape[1] == 16
        if self.camera is not None:
            np.testing.assert_allclose(camera.asnumpy()[:n], self.camera.asnumpy(), atol=1e-6)
        self.calls += 1
        target = ops.concat([self.target, self.target], axis=0)
        recip = self.schedule._coef("sqrt_recip_alphas_cumprod", timesteps, x)
        recipm1 = self.schedule._coef("sqrt_recipm1_alphas_cumprod", timesteps, x)
        return (recip * x - target) / recipm1


# ---------------------------------------------------------------------------- ground truth
@dataclass
class BoxSphereScene:
    """A sphere and an axis-aligned box, albedo only (the tiny config's ``no-material``).

    Colours vary smoothly over each solid: the sphere's from its bottom colour to its top colour
    along z, the box's from its min-corner colour to its max-corner colour (each side of the box
    shows another part of the ramp). The only discontinuities are the silhouettes."""

    sphere_center: np.ndarray
    sphere_radius: float
    sphere_colors: np.ndarray  # [2, 3]: bottom, top
    box_center: np.ndarray
    box_half: np.ndarray  # [3]
    box_colors: np.ndarray  # [2, 3]: min corner, max corner

    @classmethod
    def random(cls, rng: np.random.Generator, scale: float = 1.0) -> "BoxSphereScene":
        """A scene of this family: the sphere and the box side by side, both inside the initial
        density blob (radius ~0.5; the occupancy grid never samples far outside it) for scale <= ~1.3."""
        side = rng.normal(size=3) * np.float64([1, 1, 0.3])
        side /= np.linalg.norm(side)
        return cls(sphere_center=scale * (-0.2 * side + rng.uniform(-0.03, 0.03, 3)),
                   sphere_radius=scale * rng.uniform(0.17, 0.22), sphere_colors=rng.uniform(0.1, 0.9, (2, 3)),
                   box_center=scale * (0.2 * side + rng.uniform(-0.03, 0.03, 3)),
                   box_half=scale * rng.uniform(0.1, 0.14, 3), box_colors=rng.uniform(0.1, 0.9, (2, 3)))

    def trace(self, rays_o, rays_d):
        """Exact first hit of rays [..., 3] (unit directions): (rgb [..., 3], hit [...])."""
        o, d = rays_o.astype(np.float64), rays_d.astype(np.float64)
        # sphere
        oc = o - self.sphere_center
        b = (oc * d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - self.sphere_radius ** 2)
        t_sphere = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0.0)), np.inf)
        t_sphere = np.where(t_sphere > 0, t_sphere, np.inf)
        # box (slabs)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t0 = (self.box_center - self.box_half - o) * inv
            t1 = (self.box_center + self.box_half - o) * inv
        t_min, t_max = np.minimum(t0, t1), np.maximum(t0, t1)
        t_near, t_far = t_min.max(-1), t_max.min(-1)
        t_box = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)

        with np.errstate(invalid="ignore"):  # inf * 0 and inf - inf on missed rays, masked below
            p_sphere, p_box = o + d * t_sphere[..., None], o + d * t_box[..., None]
            u = np.clip((p_sphere[..., 2:] - self.sphere_center[2]) / (2 * self.sphere_radius) + 0.5, 0, 1)
            sphere_rgb = (1 - u) * self.sphere_colors[0] + u * self.sphere_colors[1]
            v = np.clip(((p_box - self.box_center) / (2 * self.box_half) + 0.5).mean(-1, keepdims=True), 0, 1)
            box_rgb = (1 - v) * self.box_colors[0] + v * self.box_colors[1]
        rgb = np.where((t_sphere <= t_box)[..., None], sphere_rgb, box_rgb)
        hit = np.isfinite(np.minimum(t_sphere, t_box))
        return np.where(hit[..., None], np.nan_to_num(rgb), 0.0), hit

    def surface_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """~n points [N, 3] uniform on the surface of the union (parts inside the other solid dropped)."""
        area_sphere = 4 * np.pi * self.sphere_radius ** 2
        h = self.box_half
        face_areas = 4 * np.float64([h[1] * h[2], h[0] * h[2], h[0] * h[1]])  # one face per axis
        area_box = 2 * face_areas.sum()
        n_sphere = int(n * area_sphere / (area_sphere + area_box))
        v = rng.normal(size=(n_sphere, 3))
        sphere = self.sphere_center + self.sphere_radius * v / np.linalg.norm(v, axis=1, keepdims=True)
        axis = rng.choice(3, n - n_sphere, p=face_areas / face_areas.sum())
        local = rng.uniform(-1, 1, (n - n_sphere, 3)) * h
        sign = rng.choice([-1.0, 1.0], n - n_sphere)
        local[np.arange(len(axis)), axis] = sign * h[axis]
        box = self.box_center + local
        in_box = np.all(np.abs(sphere - self.box_center) < h, axis=1)
        in_sphere = np.linalg.norm(box - self.sphere_center, axis=1) < self.sphere_radius
        return np.concatenate([sphere[~in_box], box[~in_sphere]]).astype(np.float32)


def render_scene(scene: BoxSphereScene, c2w, fovy_deg, height: int, width: int, supersample: int = 2):
    """Anti-aliased render of ``scene`` by one pinhole camera (threestudio's conventions):
    premultiplied rgb [H, W, 3] and coverage [H, W], averaged over supersample^2 rays a pixel."""
    s = supersample
    focal = 0.5 * height * s / np.tan(0.5 * np.deg2rad(fovy_deg))
    rays_o, rays_d = get_rays(get_ray_directions(height * s, width * s, focal), np.asarray(c2w, np.float32),
                              keepdim=True)
    rgb, hit = scene.trace(rays_o, rays_d)
    rgb = rgb.reshape(height, s, width, s, 3).mean((1, 3))
    return rgb, hit.reshape(height, s, width, s).mean((1, 3))


def render_views(scenes: List[BoxSphereScene], batch, background, supersample: int = 1) -> np.ndarray:
    """Images [B, H, W, 3]: view i of ``batch`` renders ``scenes[i]`` over ``background``
    ([B, 3] colours or [B, H, W, 3] images). ``supersample`` 1: one ray through each pixel
    centre, as the NeRF renderer casts them (the exact solution is then the scene itself)."""
    c2w, fovy = batch["c2w"].asnumpy(), batch["fovy"].asnumpy()
    background = np.asarray(background, np.float64)
    if background.ndim == 2:
        background = background[:, None, None, :]
    images = []
    for i, scene in enumerate(scenes):
        rgb, alpha = render_scene(scene, c2w[i], fovy[i], batch["height"], batch["width"], supersample)
        images.append(rgb + (1.0 - alpha[..., None]) * background[i])
    return np.stack(images).astype(np.float32)


class SceneTeacher:
    """Target latents of a training batch. ``scenes_for(n_views, rng)`` gives one scene per view:
    the same ground truth for all (multiview-consistent) or anything else (a negative control).
    ``background(batch)`` is what the training render composites over (see TeacherDataset)."""

    def __init__(self, guidance, scenes_for: Callable, rng: np.random.Generator):
        self.guidance, self.scenes_for, self.rng = guidance, scenes_for, rng

    def latents(self, batch, background) -> Tensor:
        images = render_views(self.scenes_for(batch["c2w"].shape[0], self.rng), batch, background)
        return encode_mean(self.guidance.model, images, self.guidance.cfg.image_size)


class TeacherDataset:
    """The data module's training set, with MVDream's random background augmentation done here
    (one colour shared by the batch with probability ``aug_prob``; otherwise the system's learned
    environment map) so that the teacher renders over the very background of the training render.
    Each batch hands its targets and cameras to the oracle before the trainer's step uses it;
    ``sizes`` lists the heights of the batches drawn."""

    def __init__(self, dataset, teacher: SceneTeacher, oracle: OracleUNet, background_cell, rng,
                 aug_prob: float = 0.5):
        self.dataset, self.teacher, self.oracle = dataset, teacher, oracle
        self.background_cell, self.rng, self.aug_prob = background_cell, rng, aug_prob
        self.sizes = []

    def collate_next(self, global_step: Optional[int] = None, epoch: int = 0):
        batch = self.dataset.collate_next(global_step, epoch)
        self.sizes.append(batch["height"])
        n = batch["c2w"].shape[0]
        if self.rng.random() < self.aug_prob:
            colors = np.repeat(self.rng.random((1, 3)), n, axis=0).astype(np.float32)
            batch["bg_color"] = Tensor(colors)
            background = colors
        else:  # the parameters are those of the coming step: the optimizer runs after it
            background = self.background_cell(dirs=batch["rays_d"]).asnumpy()
        guidance = self.teacher.guidance
        self.oracle.set_target(self.teacher.latents(batch, background), guidance.get_camera_cond(batch["c2w"]))
        return batch

    def __getattr__(self, name):  # height, width, batch_size, update_step, ... of the wrapped set
        return getattr(self.dataset, name)

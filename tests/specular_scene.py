"""Ablation of view-dependent colour on a known scene (issue 15): the ground truth and the fits.

Ground truth: two spheres under one directional light, ray-traced exactly in float64 NumPy,
with Blinn-Phong shading ``albedo * (ambient + diffuse * max(n.l, 0)) + ks * max(n.h, 0)^shininess``
(h = normalised light + view direction): the highlight moves with the camera. The Lambertian
control is the same scene with ks = 0 (fixed lighting: view-independent, so the xyz-only NeRF
can fit it exactly).

Fits: the real training pieces of ``test_photometric_fit`` (hash-grid implicit-volume,
occupancy-grid nerf-volume-renderer, the system's AdamW with MVDream's learning rates) on 16
views, scored on 6 held-out views, in three variants: xyz-only features (the original),
``dir_encoding_config`` (view directions into the feature network) and
``neural-radiance-material``.

Wiring check (``direction``): one sphere whose colour is a function of the view direction alone
(``0.5 + 0.4 d``), which no xyz-only field can show from every view; ``dir_encoding_config`` must
fit it.
"""
import numpy as np

from test_photometric_fit import GEOMETRY_CFG, OPTIMIZER_CFG, Scene, fit_and_evaluate

SPHERES = (  # (centre, radius, albedo)
    (np.array([0.12, -0.15, 0.0]), 0.30, np.array([0.75, 0.22, 0.15])),
    (np.array([-0.15, 0.22, 0.05]), 0.22, np.array([0.15, 0.32, 0.78])),
)
LIGHT_DIR = np.array([1.0, 0.5, 1.2]) / np.linalg.norm([1.0, 0.5, 1.2])
AMBIENT, DIFFUSE, SHININESS = 0.35, 0.65, 6.0
SPECULAR = {"specular": 0.8, "lambertian": 0.0}  # ks of the two scenes

TRAIN_VIEWS = ([0, 30] * 8, np.arange(16) * 22.5)  # (elevations, azimuths) in degrees
TEST_VIEWS = ([15, 10, 20, 5, 25, 12], np.arange(6) * 60.0 + 15.0)

SH4 = {"otype": "SphericalHarmonics", "degree": 4}
VARIANTS = {  # name -> (geometry config overrides, material type, material config, extra optimizer groups)
    "xyz-only": ({}, "no-material", {"n_output_dims": 3, "color_activation": "sigmoid"}, {}),
    "dir-encoding": ({"dir_encoding_config": SH4}, "no-material", {"n_output_dims": 3, "color_activation": "sigmoid"}, {}),
    "neural-radiance-material": ({"n_feature_dims": 8}, "neural-radiance-material",
                                 {"input_feature_dims": 8, "dir_encoding_config": SH4}, {"material": {"lr": 0.01}}),
}


def ray_sphere(o, d, center, radius):
    """(hit, t): whether unit-direction rays meet the sphere, and the nearer intersection's t."""
    oc = o - center
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius ** 2)
    return disc > 0, -b - np.sqrt(np.maximum(disc, 0.0))


def render_spheres(rays_o, rays_d, ks):
    """[..., 4]: Blinn-Phong rgb (white background) and hit mask of the nearest sphere, float64."""
    o, d = rays_o.astype(np.float64), rays_d.astype(np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    t_hit = np.full(o.shape[:-1], np.inf)
    normal, albedo = np.zeros(o.shape), np.zeros(o.shape)
    for center, radius, color in SPHERES:
        hit, t = ray_sphere(o, d, center, radius)
        closer = hit & (t > 0) & (t < t_hit)
        t_hit = np.where(closer, t, t_hit)
        normal = np.where(closer[..., None], (o - center + d * t[..., None]) / radius, normal)
        albedo = np.where(closer[..., None], color, albedo)
    hit = np.isfinite(t_hit)
    half = LIGHT_DIR - d
    half /= np.linalg.norm(half, axis=-1, keepdims=True)
    lambert = np.maximum((normal * LIGHT_DIR).sum(-1, keepdims=True), 0.0)
    highlight = ks * np.maximum((normal * half).sum(-1, keepdims=True), 0.0) ** SHININESS
    rgb = np.clip(albedo * (AMBIENT + DIFFUSE * lambert) + highlight, 0.0, 1.0)
    rgb = np.where(hit[..., None], rgb, 1.0)
    return np.concatenate([rgb, hit[..., None]], -1)


DIRECTION_SPHERE = (np.array([0.05, -0.05, 0.0]), 0.4)  # (centre, radius)


def render_direction_colour(rays_o, rays_d):
    """[..., 4]: a sphere coloured 0.5 + 0.4 * (unit ray direction), white background, and hit mask."""
    o, d = rays_o.astype(np.float64), rays_d.astype(np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    hit, _ = ray_sphere(o, d, *DIRECTION_SPHERE)
    rgb = np.where(hit[..., None], 0.5 + 0.4 * d, 1.0)
    return np.concatenate([rgb, hit[..., None]], -1)


def scene_render(scene_name: str):
    """The ground truth (rays_o, rays_d) -> [..., 4] of "specular", "lambertian" or "direction"."""
    if scene_name == "direction":
        return render_direction_colour
    ks = SPECULAR[scene_name]
    return lambda o, d: render_spheres(o, d, ks)


def fit_variant(scene_name: str, variant: str, seed: int = 0, steps: int = 700, rays: int = 1024,
                samples_per_ray: int = 128, log_every: int = 0):
    """fit_and_evaluate of one variant on one scene (``scene_render``)."""
    geometry, material_type, material, optimizer_groups = VARIANTS[variant]
    optimizer = {**OPTIMIZER_CFG, "params": {**OPTIMIZER_CFG["params"], **optimizer_groups}}
    return fit_and_evaluate(lambda: Scene({**GEOMETRY_CFG, **geometry}, material_type, material, samples_per_ray),
                            scene_render(scene_name), optimizer, seed, steps, TRAIN_VIEWS, TEST_VIEWS, log_every, rays)

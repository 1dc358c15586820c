"""Small analytic geometry/material/background cells for renderer tests.

They implement the interface the real modules expose: ``geometry(points, output_normal)``
-> dict(density, features[, normal]), ``geometry.forward_density``, ``geometry.cfg.radius``,
``geometry.bbox``; ``material(features=..., viewdirs=..., ...)`` -> rgb and
``material.requires_normal``, ``material.render_options(**kwargs)`` -> dict; ``background(dirs=[B,H,W,3])`` -> colours.
"""
from types import SimpleNamespace

import numpy as np
from mindspore import Parameter, Tensor, nn, ops


class SphereGeometry(nn.Cell):
    """A soft-edged sphere: density = gain * peak * sigmoid((R - |x - c|) / edge)."""

    def __init__(self, radius=0.25, center=(0.0, 0.0, 0.0), peak=80.0, edge=0.02, box_radius=1.0):
        super().__init__()
        self.cfg = SimpleNamespace(radius=box_radius)
        self.bbox = Tensor(np.array([[-box_radius] * 3, [box_radius] * 3], np.float32))
        self.center = Tensor(np.array(center, np.float32))
        self.sphere_radius, self.peak, self.edge = radius, peak, edge
        self.gain = Parameter(Tensor(np.float32(1.0)), name="gain")
        self.tint = Parameter(Tensor(np.array([0.9, 0.4, 0.2], np.float32)), name="tint")

    def forward_density(self, points):
        r = ops.norm(points - self.center, dim=-1, keepdim=True)
        return self.gain * self.peak * ops.sigmoid((self.sphere_radius - r) / self.edge)

    def construct(self, points, output_normal=False, viewdirs=None):
        out = {"density": self.forward_density(points),
               # position-dependent features so colours vary over the surface
               "features": self.tint + 0.3 * points}
        if output_normal:
            d = points - self.center
            out["normal"] = d / ops.clamp(ops.norm(d, dim=-1, keepdim=True), min=1e-6)
        return out


class TintMaterial(nn.Cell):
    """rgb = sigmoid(scale * features); optional use of normals for ``requires_normal``."""

    def __init__(self, requires_normal=False):
        super().__init__()
        self.requires_normal = requires_normal
        self.scale = Parameter(Tensor(np.float32(2.0)), name="scale")

    def construct(self, features, viewdirs=None, shading_normal=None, light_positions=None,
                  positions=None, **kwargs):
        return ops.sigmoid(self.scale * (features - 0.5))

    def render_options(self, **kwargs):
        return {}


class ConstantBackground(nn.Cell):
    def __init__(self, color=(0.1, 0.2, 0.7)):
        super().__init__()
        self.color = Parameter(Tensor(np.array(color, np.float32)), name="color")

    def construct(self, dirs):
        return ops.zeros_like(dirs) + self.color


def orbit_rays(n_views=2, height=32, width=32, distance=2.5, fov_deg=40.0, elevation_deg=15.0):
    """Pinhole cameras on a circle looking at the origin; unit directions. NumPy [B,H,W,3]."""
    focal = 0.5 * height / np.tan(np.deg2rad(fov_deg) / 2)
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    cam_dirs = np.stack([(j - width / 2) / focal, -(i - height / 2) / focal, -np.ones_like(i)], -1)
    rays_o, rays_d = [], []
    elev = np.deg2rad(elevation_deg)
    for azim in np.linspace(0, 2 * np.pi, n_views, endpoint=False):
        eye = distance * np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        d = cam_dirs @ np.stack([right, up, -fwd])
        rays_d.append(d / np.linalg.norm(d, axis=-1, keepdims=True))
        rays_o.append(np.broadcast_to(eye, d.shape))
    return np.stack(rays_o).astype(np.float32), np.stack(rays_d).astype(np.float32)

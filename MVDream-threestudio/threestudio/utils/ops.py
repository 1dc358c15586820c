"""Camera and ray helpers (threestudio conventions).

Conventions, as in threestudio:
  * world: right-handed, z up; camera-to-world ``c2w`` columns are (right, up, back, position),
    i.e. the camera looks along its local -z axis (OpenGL/Blender);
  * pixel (i, j) has camera-space direction ((i + 0.5 - cx) / fx, -(j + 0.5 - cy) / fy, -1).

Cameras are sampled on the host, so these functions compute in NumPy float32. They accept
NumPy arrays or MindSpore Tensors and return the same kind they were given (no gradient flows
through them: nothing upstream of the rays is trained).
"""
from typing import Optional, Tuple, Union

import numpy as np
from mindspore import Tensor

ArrayLike = Union[np.ndarray, Tensor]


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.asnumpy().astype(np.float32)
    return np.asarray(x, dtype=np.float32)


def _like(reference, *arrays):
    """Return ``arrays`` as Tensors if ``reference`` was a Tensor, else as NumPy arrays."""
    if isinstance(reference, Tensor):
        arrays = tuple(Tensor(a) for a in arrays)
    return arrays if len(arrays) > 1 else arrays[0]


def normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x / max(|x|, eps)`` along ``axis`` (torch.nn.functional.normalize semantics)."""
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def get_ray_directions(
    H: int,
    W: int,
    focal: Union[float, Tuple[float, float]],
    principal: Optional[Tuple[float, float]] = None,
    use_pixel_centers: bool = True,
) -> np.ndarray:
    """Camera-space ray directions [H, W, 3] (not normalized; z = -1).

    ``focal`` is one focal length (principal point at the image centre) or ``(fx, fy)``
    together with ``principal = (cx, cy)``.
    """
    offset = 0.5 if use_pixel_centers else 0.0
    if np.isscalar(focal):
        fx = fy = float(focal)
        cx, cy = (W / 2, H / 2) if principal is None else principal
    else:
        fx, fy = focal
        if principal is None:
            raise ValueError("get_ray_directions: principal=(cx, cy) is required with focal=(fx, fy)")
        cx, cy = principal
    i, j = np.meshgrid(np.arange(W, dtype=np.float32) + offset,
                       np.arange(H, dtype=np.float32) + offset, indexing="xy")
    return np.stack([(i - cx) / fx, -(j - cy) / fy, -np.ones_like(i)], axis=-1).astype(np.float32)


def get_rays(
    directions: ArrayLike,
    c2w: ArrayLike,
    keepdim: bool = False,
    noise_scale: float = 0.0,
    normalize: bool = True,
    rng: Optional[np.random.Generator] = None,
):
    """World-space ``(rays_o, rays_d)`` from camera-space ``directions`` and ``c2w`` [.., 3|4, 4].

    Shapes as in threestudio: directions [N,3] with c2w [4,4] or [N,4,4]; [H,W,3] with [4,4]
    or [B,4,4] (-> [B,H,W,3]); [B,H,W,3] with [B,4,4]. Unless ``keepdim`` the result is
    flattened to [-1, 3]. ``noise_scale`` jitters origins and directions with one Gaussian
    3-vector each (drawn from ``rng``).
    """
    d = _to_numpy(directions)
    m = _to_numpy(c2w)
    if d.shape[-1] != 3:
        raise ValueError(f"get_rays: directions must end in 3, got shape {d.shape}")
    single_camera = m.ndim == 2
    if single_camera:
        m = m[None]
    rot, pos = m[:, :3, :3], m[:, :3, 3]
    if d.ndim == 2:  # [N, 3] rays, one camera per ray or a shared one
        rays_d = (rot @ d[..., None])[..., 0]
        rays_o = np.broadcast_to(pos, rays_d.shape)
    elif d.ndim in (3, 4):  # [H, W, 3] shared by all cameras, or [B, H, W, 3]
        shared_grid = d.ndim == 3
        rays_d = (rot[:, None, None] @ (d[None] if shared_grid else d)[..., None])[..., 0]
        rays_o = np.broadcast_to(pos[:, None, None, :], rays_d.shape)
        if single_camera and shared_grid:  # [H, W, 3] with [4, 4] stays [H, W, 3]
            rays_o, rays_d = rays_o[0], rays_d[0]
    else:
        raise ValueError(f"get_rays: unsupported directions shape {d.shape}")

    rays_o = np.array(rays_o, dtype=np.float32)
    if noise_scale > 0:
        rng = rng if rng is not None else np.random.default_rng()
        rays_o = rays_o + rng.standard_normal(3).astype(np.float32) * noise_scale
        rays_d = rays_d + rng.standard_normal(3).astype(np.float32) * noise_scale
    if normalize:
        rays_d = _normalize(rays_d)
    rays_d = rays_d.astype(np.float32)
    if not keepdim:
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    return _like(directions, rays_o, rays_d)


_normalize = normalize  # get_rays has a parameter called ``normalize``


def get_projection_matrix(fovy: ArrayLike, aspect_wh: float, near: float, far: float):
    """OpenGL perspective matrices [B, 4, 4] for vertical fields of view ``fovy`` [B] (radians).

    The y row is negated, as in threestudio, because nvdiffrast's image y axis points down.
    """
    f = _to_numpy(fovy).reshape(-1)
    proj = np.zeros((f.shape[0], 4, 4), dtype=np.float32)
    proj[:, 0, 0] = 1.0 / (np.tan(f / 2.0) * aspect_wh)
    proj[:, 1, 1] = -1.0 / np.tan(f / 2.0)
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return _like(fovy, proj)


def get_mvp_matrix(c2w: ArrayLike, proj_mtx: ArrayLike):
    """``proj_mtx @ inverse(c2w)`` [B, 4, 4]; c2w is a rigid transform [B, 3|4, 4]."""
    m = _to_numpy(c2w)
    rot_t = np.transpose(m[:, :3, :3], (0, 2, 1))
    w2c = np.zeros((m.shape[0], 4, 4), dtype=np.float32)
    w2c[:, :3, :3] = rot_t
    w2c[:, :3, 3] = -np.einsum("bij,bj->bi", rot_t, m[:, :3, 3])
    w2c[:, 3, 3] = 1.0
    return _like(c2w, (_to_numpy(proj_mtx) @ w2c).astype(np.float32))


def spherical_to_cartesian(elevation: np.ndarray, azimuth: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Positions [B, 3] from elevation/azimuth (radians) and distance: x back, y right, z up,
    azimuth turning from +x towards +y."""
    return np.stack([
        distance * np.cos(elevation) * np.cos(azimuth),
        distance * np.cos(elevation) * np.sin(azimuth),
        distance * np.sin(elevation),
    ], axis=-1).astype(np.float32)


def look_at_c2w(camera_positions: np.ndarray, center: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world [B, 4, 4] of cameras at ``camera_positions`` looking at ``center``."""
    lookat = normalize(center - camera_positions)
    right = normalize(np.cross(lookat, up))
    up = normalize(np.cross(right, lookat))
    c2w = np.zeros((camera_positions.shape[0], 4, 4), dtype=np.float32)
    c2w[:, :3, :3] = np.stack([right, up, -lookat], axis=-1)
    c2w[:, :3, 3] = camera_positions
    c2w[:, 3, 3] = 1.0
    return c2w

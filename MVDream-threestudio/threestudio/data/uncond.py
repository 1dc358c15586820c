"""Shared parts of the random-camera data modules (threestudio ``data/uncond.py``).

* ``RandomCameraDataModuleConfig``: threestudio's keys and defaults.
* ``ResolutionSchedule``: ``height``/``width``/``batch_size`` given as lists switch at
  ``resolution_milestones`` (global steps).
* ``make_camera_batch``: cameras -> the batch dict the renderer and the systems consume.
* ``RandomCameraDataset``: the fixed orbits used for validation (``n_val_views``) and testing
  (``n_test_views``) at the eval distance, field of view, elevation and resolution.

Cameras are computed on the host in NumPy; the batch holds MindSpore Tensors.
"""
import bisect
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mindspore import Tensor

from ..utils.config import ConfigError
from ..utils.ops import (
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
    spherical_to_cartesian,
)

logger = logging.getLogger(__name__)

# threestudio hard-codes the clip planes of the rasterization matrix (MVDream: 0.1 / 1000).
NEAR, FAR = 0.1, 1000.0


@dataclass
class RandomCameraDataModuleConfig:
    # height, width and batch_size are an int or a list switched at resolution_milestones
    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: List[int] = field(default_factory=list)
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: Tuple[float, float] = (-10, 90)
    azimuth_range: Tuple[float, float] = (-180, 180)
    camera_distance_range: Tuple[float, float] = (1, 1.5)
    fovy_range: Tuple[float, float] = (40, 70)  # degrees, vertical (along height)
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: str = "dreamfusion"
    batch_uniform_azimuth: bool = True
    progressive_until: int = 0  # steps over which elevation/azimuth ranges widen from the eval view
    rays_d_normalize: bool = True
    # Port addition: seed of the data module's NumPy Generator (None: the `seed` passed to the
    # data module, i.e. the experiment seed, else 0).
    seed: Optional[int] = None


def _as_list(value) -> List[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class ResolutionSchedule:
    """(height, width, batch_size) as a function of the global step."""

    def __init__(self, cfg: RandomCameraDataModuleConfig):
        self.heights, self.widths = _as_list(cfg.height), _as_list(cfg.width)
        self.batch_sizes = _as_list(cfg.batch_size)
        sizes = {len(self.heights), len(self.widths), len(self.batch_sizes)}
        milestones = [int(m) for m in cfg.resolution_milestones]
        if sizes == {1}:
            if milestones:
                logger.warning("Ignoring resolution_milestones since height, width and batch_size do not change")
            self.milestones = [-1]
        elif len(sizes) != 1 or len(self.heights) != len(milestones) + 1:
            raise ConfigError(
                f"height {cfg.height}, width {cfg.width} and batch_size {cfg.batch_size} must be lists of "
                f"len(resolution_milestones) + 1 = {len(milestones) + 1} entries (or single numbers)")
        else:
            self.milestones = [-1] + milestones
        # Unit-focal directions per resolution, scaled per camera by 1 / focal.
        self.directions_unit_focal = [get_ray_directions(h, w, 1.0) for h, w in zip(self.heights, self.widths)]

    def index(self, global_step: int) -> int:
        return bisect.bisect_right(self.milestones, global_step) - 1


def make_camera_batch(
    camera_positions: np.ndarray,
    center: np.ndarray,
    up: np.ndarray,
    light_positions: np.ndarray,
    elevation_deg: np.ndarray,
    azimuth_deg: np.ndarray,
    camera_distances: np.ndarray,
    fovy_deg: np.ndarray,
    directions_unit_focal: np.ndarray,
    rays_d_normalize: bool = True,
) -> Dict[str, Any]:
    """The batch dict of B cameras rendering images of ``directions_unit_focal``'s size.

    Keys: rays_o, rays_d [B,H,W,3]; mvp_mtx, proj_mtx, c2w [B,4,4]; camera_positions,
    light_positions [B,3]; elevation, azimuth, fovy (degrees), camera_distances [B]; height,
    width (ints). All arrays are float32 MindSpore Tensors.
    """
    height, width = directions_unit_focal.shape[:2]
    fovy = np.deg2rad(fovy_deg).astype(np.float32)
    c2w = look_at_c2w(camera_positions, center, up)
    focal = 0.5 * height / np.tan(0.5 * fovy)
    directions = np.repeat(directions_unit_focal[None], len(fovy), axis=0)
    directions[..., :2] /= focal[:, None, None, None]
    rays_o, rays_d = get_rays(directions, c2w, keepdim=True, normalize=rays_d_normalize)
    proj_mtx = get_projection_matrix(fovy, width / height, NEAR, FAR)
    mvp_mtx = get_mvp_matrix(c2w, proj_mtx)
    arrays = {
        "rays_o": rays_o, "rays_d": rays_d, "mvp_mtx": mvp_mtx, "proj_mtx": proj_mtx, "c2w": c2w,
        "camera_positions": camera_positions, "light_positions": light_positions,
        "elevation": elevation_deg, "azimuth": azimuth_deg, "camera_distances": camera_distances,
        "fovy": fovy_deg,
    }
    batch: Dict[str, Any] = {k: Tensor(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    batch.update(height=int(height), width=int(width))
    return batch


class RandomCameraDataset:
    """Fixed orbit around the origin for validation (``split="val"``) or testing.

    Validation: ``n_val_views`` azimuths evenly over [0, 360) ; test: ``n_test_views`` azimuths
    ``linspace(0, 360, n)`` (first and last coincide, as in threestudio). Every view uses
    ``eval_elevation_deg``, ``eval_camera_distance``, ``eval_fovy_deg`` and the eval resolution;
    the light sits at the camera. Rays are built on demand (120 precomputed 512x512 views would
    take 750 MB).

    Iterating yields one-view batches (threestudio's val/test loaders use batch size 1) with
    an extra ``index`` key (int64 Tensor [1]); ``get_batch(indices)`` builds several at once.
    """

    def __init__(self, cfg: RandomCameraDataModuleConfig, split: str):
        if split not in ("val", "test"):
            raise ValueError(f"RandomCameraDataset split must be 'val' or 'test', got '{split}'")
        self.cfg, self.split = cfg, split
        n = cfg.n_val_views if split == "val" else cfg.n_test_views
        self.n_views = n
        self.azimuth_deg = (np.linspace(0.0, 360.0, n + 1)[:n] if split == "val"
                            else np.linspace(0.0, 360.0, n)).astype(np.float32)
        self.elevation_deg = np.full(n, cfg.eval_elevation_deg, dtype=np.float32)
        self.camera_distances = np.full(n, cfg.eval_camera_distance, dtype=np.float32)
        self.fovy_deg = np.full(n, cfg.eval_fovy_deg, dtype=np.float32)
        self.camera_positions = spherical_to_cartesian(
            np.deg2rad(self.elevation_deg), np.deg2rad(self.azimuth_deg), self.camera_distances)
        self.directions_unit_focal = get_ray_directions(cfg.eval_height, cfg.eval_width, 1.0)

    def __len__(self) -> int:
        return self.n_views

    def get_batch(self, indices: Sequence[int]) -> Dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_views or idx.max() >= self.n_views):
            raise IndexError(f"{self.split} view index out of range 0..{self.n_views - 1}: {idx.tolist()}")
        positions = self.camera_positions[idx]
        batch = make_camera_batch(
            positions, np.zeros_like(positions), np.tile(np.float32([0, 0, 1]), (len(idx), 1)), positions,
            self.elevation_deg[idx], self.azimuth_deg[idx], self.camera_distances[idx], self.fovy_deg[idx],
            self.directions_unit_focal, self.cfg.rays_d_normalize)
        batch["index"] = Tensor(idx % self.n_views)
        return batch

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.get_batch([index])

    def __iter__(self):
        for i in range(self.n_views):
            yield self.get_batch([i])

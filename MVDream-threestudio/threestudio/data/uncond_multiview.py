"""Random multiview cameras for MVDream (``random-multiview-camera-datamodule``).

Each training batch holds ``batch_size // n_view`` objects seen by ``n_view`` cameras that share
elevation, field of view, distance, perturbations and light sampling, with azimuths evenly
spread over ``azimuth_range`` from a random start (MVDream's 4 orthogonal views).

Usage (no DataLoader; one NumPy Generator owned by the data module drives all sampling)::

    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed)
    dm.setup()
    for step in range(max_steps):
        batch = dm.train_dataset.collate_next(step)   # = update_step(0, step) + collate()
        ...
    state = dm.get_rng_state()      # save with the checkpoint ...
    dm.set_rng_state(state)         # ... and restore to replay the same batches
    for batch in dm.val_dataset:    # one-view batches with an "index" key; same for test
        ...

Batch keys: rays_o, rays_d [B,H,W,3]; c2w, mvp_mtx, proj_mtx [B,4,4] (threestudio / OpenGL
camera axes: right, up, back); camera_positions, light_positions [B,3]; elevation, azimuth,
fovy in degrees and camera_distances [B]; height, width ints. Arrays are float32 Tensors.

Kept as in MVDream (on purpose, it is what the released configs trained with): the "uniform on
the sphere" elevation branch (half of the batches) draws sin(elevation) uniformly in
[e0 / 90, e1 / 90], so with elevation_range [0, 30] that branch stays below asin(1/3) = 19.5 deg.

Differences from the original (none changes a run of the shipped configs):
  * ``progressive_until: 0`` means "no progressive ranges"; the original collapsed the first
    step (global_step 0) to the eval elevation and azimuth 0.
  * the ``magic3d`` light azimuth is drawn in [-pi, pi] as its comment says (the code drew
    [-2pi, -pi]).
"""
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

import threestudio

from ..utils.base import BaseObject, Updateable
from ..utils.config import ConfigError
from ..utils.distributed import BatchShard, check_world_size
from ..utils.ops import normalize, spherical_to_cartesian
from .uncond import RandomCameraDataModuleConfig, RandomCameraDataset, ResolutionSchedule, make_camera_batch


@dataclass
class RandomMultiviewCameraDataModuleConfig(RandomCameraDataModuleConfig):
    relative_radius: bool = True  # distance is relative: multiplied by 1 / tan(fovy / 2)
    n_view: int = 1
    zoom_range: Tuple[float, float] = (1.0, 1.0)  # fovy scale applied after the distance is fixed


def _uniform(rng: np.random.Generator, low: float, high: float, size) -> np.ndarray:
    return rng.random(size) * (high - low) + low


# Light samplers: (rng, cfg, camera_positions [B,3], light_distances [B], n_groups, n_view) -> [B,3].
# Random draws are per object and shared by its n_view cameras.
def _light_dreamfusion(rng, cfg, camera_positions, light_distances, n_groups, n_view):
    # around the camera direction, Gaussian perturbation of std light_position_perturb
    noise = np.repeat(rng.standard_normal((n_groups, 3)), n_view, axis=0)
    return normalize(camera_positions + noise * cfg.light_position_perturb) * light_distances[:, None]


def _light_magic3d(rng, cfg, camera_positions, light_distances, n_groups, n_view):
    # within 60 degrees of the camera's up-facing hemisphere, in the camera's local frame
    local_z = normalize(camera_positions)
    local_x = normalize(np.stack([local_z[:, 1], -local_z[:, 0], np.zeros_like(local_z[:, 0])], -1))
    local_y = normalize(np.cross(local_z, local_x))
    rot = np.stack([local_x, local_y, local_z], axis=-1)
    azimuth = np.repeat(_uniform(rng, -math.pi, math.pi, n_groups), n_view)
    elevation = np.repeat(_uniform(rng, math.pi / 6, math.pi / 2, n_groups), n_view)
    local = spherical_to_cartesian(elevation, azimuth, light_distances)
    return (rot @ local[:, :, None])[:, :, 0]


LIGHT_SAMPLERS: Dict[str, Callable] = {"dreamfusion": _light_dreamfusion, "magic3d": _light_magic3d}


class RandomMultiviewCameraIterableDataset(Updateable):
    """Endless training batches; ``update_step`` selects resolution, batch size and ranges."""

    def __init__(self, cfg: RandomMultiviewCameraDataModuleConfig, rng: np.random.Generator,
                 shard: Optional[BatchShard] = None):
        self.cfg, self.rng = cfg, rng
        self.shard = shard  # data-parallel rank: cameras of the whole batch are drawn, its groups kept
        self.schedule = ResolutionSchedule(cfg)
        self._set_size(0)
        self.elevation_range = tuple(cfg.elevation_range)
        self.azimuth_range = tuple(cfg.azimuth_range)
        self.camera_distance_range = tuple(cfg.camera_distance_range)
        self.fovy_range = tuple(cfg.fovy_range)

    def _set_size(self, i: int):
        self.height, self.width = self.schedule.heights[i], self.schedule.widths[i]
        self.batch_size = self.schedule.batch_sizes[i]
        self.directions_unit_focal = self.schedule.directions_unit_focal[i]

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        self._set_size(self.schedule.index(global_step))
        # progressive views: widen elevation/azimuth ranges from the eval view over progressive_until steps
        cfg = self.cfg
        r = 1.0 if cfg.progressive_until <= 0 else min(1.0, global_step / (cfg.progressive_until + 1))
        self.elevation_range = tuple((1 - r) * cfg.eval_elevation_deg + r * e for e in cfg.elevation_range)
        self.azimuth_range = tuple(r * a for a in cfg.azimuth_range)

    def _sample_elevation_rad(self, n_groups: int) -> np.ndarray:
        e0, e1 = self.elevation_range
        if self.rng.random() < 0.5:  # uniform in degrees (denser towards the poles)
            return np.deg2rad(_uniform(self.rng, e0, e1, n_groups))
        # MVDream's "uniform on the sphere": sin(elevation) uniform in [e0 / 90, e1 / 90]
        # (inverse transform of (e + 90) / 180, kept as in the original)
        p = _uniform(self.rng, (e0 + 90.0) / 180.0, (e1 + 90.0) / 180.0, n_groups)
        return np.arcsin(2.0 * p - 1.0)

    def collate(self, batch: Any = None) -> Dict[str, Any]:
        cfg, rng, n_view = self.cfg, self.rng, self.cfg.n_view
        n_groups = self.batch_size // n_view

        def per_object(x):  # one draw per object, shared by its n_view cameras
            return np.repeat(x, n_view, axis=0)

        elevation = per_object(self._sample_elevation_rad(n_groups))
        a0, a1 = self.azimuth_range
        azimuth_deg = ((rng.random((n_groups, 1)) + np.arange(n_view)[None]) / n_view * (a1 - a0) + a0).reshape(-1)
        fovy_deg = per_object(_uniform(rng, *self.fovy_range, n_groups))
        camera_distances = per_object(_uniform(rng, *self.camera_distance_range, n_groups))
        if cfg.relative_radius:  # the object keeps its apparent size whatever the fovy
            camera_distances = camera_distances / np.tan(0.5 * np.deg2rad(fovy_deg))
        fovy_deg = fovy_deg * per_object(_uniform(rng, *cfg.zoom_range, n_groups))

        camera_positions = spherical_to_cartesian(elevation, np.deg2rad(azimuth_deg), camera_distances)
        camera_positions = camera_positions + per_object(_uniform(rng, -cfg.camera_perturb, cfg.camera_perturb,
                                                                  (n_groups, 3)))
        center = per_object(rng.standard_normal((n_groups, 3)) * cfg.center_perturb)
        up = np.float32([0, 0, 1]) + per_object(rng.standard_normal((n_groups, 3)) * cfg.up_perturb)

        light_distances = per_object(_uniform(rng, *cfg.light_distance_range, n_groups))
        light_positions = LIGHT_SAMPLERS[cfg.light_sample_strategy](
            rng, cfg, camera_positions, light_distances, n_groups, n_view)

        cameras = (camera_positions, center, up, light_positions, np.rad2deg(elevation), azimuth_deg,
                   camera_distances, fovy_deg)
        if self.shard is None:
            return make_camera_batch(*cameras, self.directions_unit_focal, cfg.rays_d_normalize)
        batch = make_camera_batch(*(self.shard.take(x) for x in cameras), self.directions_unit_focal,
                                  cfg.rays_d_normalize)
        batch["shard"] = self.shard  # per-element random draws downstream take this rank's rows
        return batch

    def collate_next(self, global_step: Optional[int] = None, epoch: int = 0) -> Dict[str, Any]:
        """The next training batch; with ``global_step``, first apply that step's schedule."""
        if global_step is not None:
            self.update_step(epoch, global_step)
        return self.collate()

    def __iter__(self):
        while True:
            yield self.collate()


@threestudio.register("random-multiview-camera-datamodule")
@threestudio.register("mvdream-random-multiview-camera-datamodule")
class RandomMultiviewCameraDataModule(BaseObject):
    Config = RandomMultiviewCameraDataModuleConfig
    cfg: RandomMultiviewCameraDataModuleConfig

    def configure(self, seed: Optional[int] = None, rank: int = 0, world_size: int = 1):
        """``rank`` / ``world_size``: data-parallel training (threestudio.utils.distributed);
        every rank draws the same cameras and keeps its share of the view groups."""
        cfg = self.cfg
        if cfg.n_view < 1:
            raise ConfigError(f"n_view must be >= 1, got {cfg.n_view}")
        schedule = ResolutionSchedule(cfg)  # validates the resolution lists
        for bs in schedule.batch_sizes:
            if bs % cfg.n_view != 0:
                raise ConfigError(
                    f"batch_size {bs} is not divisible by n_view {cfg.n_view}; use a multiple of {cfg.n_view}")
        self.shard = BatchShard(rank, world_size) if world_size > 1 else None
        if cfg.light_sample_strategy not in LIGHT_SAMPLERS:
            raise ConfigError(f"unknown light_sample_strategy '{cfg.light_sample_strategy}'; "
                              f"choose one of {', '.join(LIGHT_SAMPLERS)}")
        self.seed = cfg.seed if cfg.seed is not None else (seed if seed is not None else 0)
        self.rng = np.random.default_rng(self.seed)
        self.train_dataset = self.val_dataset = self.test_dataset = None

    def setup(self, stage: Optional[str] = None):
        if stage in (None, "fit"):
            self.train_dataset = RandomMultiviewCameraIterableDataset(self.cfg, self.rng, self.shard)
        if stage in (None, "fit", "validate"):
            self.val_dataset = RandomCameraDataset(self.cfg, "val")
        if stage in (None, "test", "predict"):
            self.test_dataset = RandomCameraDataset(self.cfg, "test")

    def train_dataloader(self):
        return self.train_dataset

    def val_dataloader(self):
        return self.val_dataset

    def test_dataloader(self):
        return self.test_dataset

    def _updateable_children(self):
        return []  # update_step forwards to the training set itself

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        if self.train_dataset is not None:
            self.train_dataset.update_step(epoch, global_step, on_load_weights)

    def check_world_size(self, start_step: int, stop_step: int):
        """One-line ConfigError unless the batches of steps ``start_step .. stop_step - 1`` split
        into whole view groups over the data-parallel ranks."""
        world = self.shard.world if self.shard is not None else 1
        schedule = ResolutionSchedule(self.cfg)
        stages = range(schedule.index(start_step), schedule.index(max(start_step, stop_step - 1)) + 1)
        check_world_size([schedule.batch_sizes[i] for i in stages], self.cfg.n_view, world)

    def get_rng_state(self) -> dict:
        """Generator state (a plain dict) to store with a checkpoint."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict):
        self.rng.bit_generator.state = state

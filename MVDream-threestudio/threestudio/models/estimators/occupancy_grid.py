"""Occupancy-grid sample estimator: a pure MindSpore/NumPy stand-in for nerfacc's ``OccGridEstimator``.

The grid only decides *where* to sample, which is not differentiable, so all of its
bookkeeping (ray/box intersection, marching, cell look-ups, visibility pruning) runs in
NumPy and returns packed samples ``(ray_indices, t_starts, t_ends)`` sorted by ray. The
state (``occs``, ``binaries``) lives in non-trainable Parameters, so checkpoints save and
restore it exactly; the names follow nerfacc's buffers.
"""
from typing import Callable, Optional, Tuple

import numpy as np
from mindspore import Parameter, Tensor, nn

from threestudio.utils.autodiff import no_grad
from threestudio.utils.distributed import draw_rows
from threestudio.utils.shape_buckets import call_bucketed

# Rays handled at once by the NumPy marcher (bounds host memory: ~100 segments per ray).
_RAY_CHUNK = 1 << 15


def _to_numpy(x) -> np.ndarray:
    return x.asnumpy() if isinstance(x, Tensor) else np.asarray(x)


def ray_aabb_intersect(rays_o: np.ndarray, rays_d: np.ndarray, aabb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Slab test. Returns per-ray ``(t_min, t_max)``; ``t_max <= t_min`` means a miss."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_d = 1.0 / rays_d
        t0 = (aabb[:3] - rays_o) * inv_d
        t1 = (aabb[3:] - rays_o) * inv_d
    # a zero direction component gives nan (0 * inf) when the origin sits on a slab plane
    lo = np.where(np.isnan(t0), -np.inf, np.minimum(t0, t1))
    hi = np.where(np.isnan(t1), np.inf, np.maximum(t0, t1))
    return lo.max(axis=-1), hi.min(axis=-1)


def visibility_from_density_np(tau: np.ndarray, ray_indices: np.ndarray,
                               early_stop_eps: float, alpha_thre: float) -> np.ndarray:
    """Which packed samples matter: transmittance >= eps and alpha >= alpha_thre.

    ``tau`` is the optical thickness sigma * delta of each sample (samples sorted by ray).
    Float64 global cumsum minus each ray's starting value gives the per-ray exclusive sum.
    """
    excl = np.cumsum(tau) - tau
    first = np.ones(ray_indices.size, bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(ray_indices.size), 0))
    trans = np.exp(-(excl - excl[start]))
    vis = trans >= early_stop_eps
    if alpha_thre > 0.0:
        vis &= (1.0 - np.exp(-tau)) >= alpha_thre
    return vis


class OccupancyGrid(nn.Cell):
    """Binary occupancy grid over ``roi_aabb`` (xmin, ymin, zmin, xmax, ymax, zmax).

    Semantics follow nerfacc 0.5 ``OccGridEstimator`` with ``levels=1`` and ``cone_angle=0``:
    uniform marching with step ``render_step_size`` from the near plane (plus one random
    offset per ray when stratified), samples whose cell is unoccupied are skipped, then
    optionally samples with low alpha or after the transmittance falls below
    ``early_stop_eps`` are dropped.
    """

    def __init__(self, roi_aabb, resolution=128, levels: int = 1):
        super().__init__()
        if levels != 1:
            raise NotImplementedError("OccupancyGrid supports levels=1 only (bounded scenes)")
        res = np.broadcast_to(np.asarray(resolution, dtype=np.int32), (3,)).copy()
        aabb = np.asarray(_to_numpy(roi_aabb), dtype=np.float32).reshape(1, 6)
        self.levels = levels
        self.cells_per_lvl = int(res.prod())
        # Parameters (not trainable) so that save/load_checkpoint carries the grid state.
        self.resolution = Parameter(Tensor(res), name="resolution", requires_grad=False)
        self.aabbs = Parameter(Tensor(aabb), name="aabbs", requires_grad=False)
        self.occs = Parameter(Tensor(np.zeros(levels * self.cells_per_lvl, np.float32)),
                              name="occs", requires_grad=False)
        self.binaries = Parameter(Tensor(np.zeros((levels, *res.tolist()), np.bool_)),
                                  name="binaries", requires_grad=False)
        self._grid_coords = np.stack(np.meshgrid(*[np.arange(r) for r in res], indexing="ij"),
                                     axis=-1).reshape(-1, 3)

    # ------------------------------------------------------------------ state helpers
    def fill(self, value: bool = True) -> None:
        """Mark every cell (un)occupied, e.g. to disable pruning (``grid_prune=False``)."""
        self.occs.set_data(Tensor(np.full(self.cells_per_lvl * self.levels, float(value), np.float32)))
        self.binaries.set_data(Tensor(np.full(self.binaries.shape, bool(value))))

    def _aabb(self) -> np.ndarray:
        return self.aabbs.asnumpy()[0].astype(np.float64)

    def cell_index(self, points: np.ndarray) -> np.ndarray:
        """Flat cell index of world points (clamped into the grid)."""
        aabb, res = self._aabb(), self.resolution.asnumpy()
        ijk = np.floor((points - aabb[:3]) / (aabb[3:] - aabb[:3]) * res).astype(np.int64)
        ijk = np.clip(ijk, 0, res - 1)
        return (ijk[:, 0] * res[1] + ijk[:, 1]) * res[2] + ijk[:, 2]

    # ------------------------------------------------------------------ sampling
    def sampling(
        self,
        rays_o,
        rays_d,
        sigma_fn: Optional[Callable] = None,
        alpha_fn: Optional[Callable] = None,
        near_plane: float = 0.0,
        far_plane: float = 1e10,
        t_min=None,
        t_max=None,
        render_step_size: float = 1e-3,
        early_stop_eps: float = 1e-4,
        alpha_thre: float = 0.0,
        stratified: bool = False,
        cone_angle: float = 0.0,
        shard=None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """March rays through the occupied cells.

        ``sigma_fn(t_starts, t_ends, ray_indices)`` / ``alpha_fn(...)`` receive NumPy arrays
        and return densities / alphas ``[n]`` (Tensor or array); they are called without
        gradient. Returns NumPy ``ray_indices`` (int64), ``t_starts``, ``t_ends`` (float32),
        packed and sorted by ray. ``shard`` (``threestudio.utils.distributed.BatchShard``): the rays
        are a data-parallel rank's rows of a larger batch; the stratified jitter is drawn for the
        whole batch, as one process would, and the rank's rows are kept.
        """
        if cone_angle != 0.0:
            raise NotImplementedError("only cone_angle=0 (constant step) is supported")
        rays_o = _to_numpy(rays_o).astype(np.float64).reshape(-1, 3)
        rays_d = _to_numpy(rays_d).astype(np.float64).reshape(-1, 3)
        n_rays = rays_o.shape[0]
        near = np.full(n_rays, near_plane, np.float64)
        far = np.full(n_rays, far_plane, np.float64)
        if t_min is not None:
            near = np.maximum(near, _to_numpy(t_min))
        if t_max is not None:
            far = np.minimum(far, _to_numpy(t_max))
        if stratified:
            near = near + draw_rows(np.random.random_sample, (n_rays,), shard) * render_step_size

        # Samples sit on t = near + k * step; keep those whose interval lies inside the box.
        box_lo, box_hi = ray_aabb_intersect(rays_o, rays_d, self._aabb())
        t_lo, t_hi = np.maximum(box_lo, near), np.minimum(box_hi, far)
        k_first = np.ceil((t_lo - near) / render_step_size - 1e-6)
        k_end = np.floor((t_hi - near) / render_step_size + 1e-6)  # exclusive: last end <= t_hi
        k_end = np.where(t_hi > t_lo, np.maximum(k_end, k_first), k_first)

        # Only samples whose midpoint falls in an occupied cell are generated: the rays are
        # cut at the cell planes into segments, and the sample range of each occupied
        # segment is computed directly (cost ~ crossed cells + kept samples, not marched).
        marching = np.nonzero(k_end > k_first)[0]
        pieces = [self._samples_in_occupied_cells(
            rays_o[r], rays_d[r], near[r], t_lo[r], t_hi[r], k_first[r], k_end[r], render_step_size, r)
            for r in np.array_split(marching, max(1, -(-marching.size // _RAY_CHUNK)))]
        ray_indices = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int64)
        t_starts = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0)
        t_ends = t_starts + render_step_size
        self.last_num_marched = int((k_end - k_first).sum())
        self.last_num_grid = int(ray_indices.size)

        fn = sigma_fn if sigma_fn is not None else alpha_fn
        if fn is not None and (alpha_thre > 0.0 or early_stop_eps > 0.0) and ray_indices.size:
            # as nerfacc: never prune harder than the mean occupancy
            alpha_thre = min(alpha_thre, float(self.occs.asnumpy().mean()))
            with no_grad():
                values = _to_numpy(fn(t_starts.astype(np.float32), t_ends.astype(np.float32), ray_indices))
            values = values.reshape(-1).astype(np.float64)
            if sigma_fn is not None:
                values = values * (t_ends - t_starts)  # optical thickness
            else:
                values = -np.log(np.clip(1.0 - values, 1e-30, None))
            keep = visibility_from_density_np(values, ray_indices, early_stop_eps, alpha_thre)
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices.astype(np.int64), t_starts.astype(np.float32), t_ends.astype(np.float32)

    def _samples_in_occupied_cells(self, rays_o, rays_d, near, t_lo, t_hi, k_first, k_end, step, ray_ids):
        """Packed ``(ray_indices, t_starts)`` of samples ``t = near + k step``, ``k_first <= k < k_end``,
        whose midpoint lies in an occupied cell."""
        aabb, res = self._aabb(), self.resolution.asnumpy()
        cell = (aabb[3:] - aabb[:3]) / res
        crossings = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis in range(3):
                planes = aabb[axis] + cell[axis] * np.arange(res[axis] + 1)
                crossings.append((planes[None, :] - rays_o[:, axis:axis + 1]) / rays_d[:, axis:axis + 1])
        bounds = np.concatenate([t_lo[:, None], t_hi[:, None], *crossings], axis=1)
        bounds = np.clip(np.nan_to_num(bounds, nan=-np.inf), t_lo[:, None], t_hi[:, None])
        bounds.sort(axis=1)
        # most of the 3 (res + 1) + 1 segments collapse onto the box ends: keep non-empty ones
        seg_ray, seg_j = np.nonzero(bounds[:, 1:] > bounds[:, :-1])
        seg_a, seg_b = bounds[seg_ray, seg_j], bounds[seg_ray, seg_j + 1]
        mid = 0.5 * (seg_a + seg_b)
        occupied = self.binaries.asnumpy().reshape(-1)[
            self.cell_index(rays_o[seg_ray] + rays_d[seg_ray] * mid[:, None])]
        seg_ray, seg_a, seg_b = seg_ray[occupied], seg_a[occupied], seg_b[occupied]
        # sample k has its midpoint near + (k + 1/2) step in [seg_a, seg_b)
        near_s, k_first_s, k_end_s = near[seg_ray], k_first[seg_ray], k_end[seg_ray]
        k_lo = np.clip(np.ceil((seg_a - near_s) / step - 0.5), k_first_s, k_end_s)
        k_hi = np.clip(np.ceil((seg_b - near_s) / step - 0.5), k_first_s, k_end_s)
        count = (k_hi - k_lo).astype(np.int64)
        sample_seg = np.repeat(np.arange(count.size), count)
        k = k_lo[sample_seg] + (np.arange(sample_seg.size) - (np.cumsum(count) - count)[sample_seg])
        local = seg_ray[sample_seg]
        return ray_ids[local], near[local] + k * step

    # ------------------------------------------------------------------ updates
    def update_every_n_steps(
        self,
        step: int,
        occ_eval_fn: Callable,
        occ_thre: float = 1e-2,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
    ) -> None:
        """EMA update of the occupancies every ``n`` steps (training only, as nerfacc)."""
        if not self.training:
            raise RuntimeError("update_every_n_steps is for training; call _update() directly otherwise")
        if step % n == 0:
            self._update(step, occ_eval_fn, occ_thre, ema_decay, warmup_steps)

    def _sample_cells(self, step: int, warmup_steps: int) -> np.ndarray:
        if step < warmup_steps:
            return np.arange(self.cells_per_lvl)
        # after warm-up: n/4 uniformly random cells plus up to n/4 of the occupied ones
        n = self.cells_per_lvl // 4
        uniform = np.random.randint(self.cells_per_lvl, size=n)
        occupied = np.nonzero(self.binaries.asnumpy().reshape(-1))[0]
        if n < occupied.size:
            occupied = occupied[np.random.randint(occupied.size, size=n)]
        return np.concatenate([uniform, occupied])

    def _update(self, step: int, occ_eval_fn: Callable, occ_thre: float = 0.01,
                ema_decay: float = 0.95, warmup_steps: int = 256) -> None:
        indices = self._sample_cells(step, warmup_steps)
        aabb, res = self._aabb(), self.resolution.asnumpy()
        # one jittered point per chosen cell
        x = (self._grid_coords[indices] + np.random.rand(indices.size, 3)) / res
        x = (aabb[:3] + x * (aabb[3:] - aabb[:3])).astype(np.float32)
        with no_grad():
            # after warm-up the number of cells varies per update: bucket it (see shape_buckets)
            occ = call_bucketed(lambda rows: occ_eval_fn(Tensor(rows)), x).reshape(-1)
        occs = self.occs.asnumpy().copy()
        cur = occs[indices]
        # negative occupancies mark cells excluded for good (nerfacc convention)
        occs[indices] = np.where(cur < 0, cur, np.maximum(cur * ema_decay, occ))
        positive = occs[occs > 0]
        # nerfacc: thre = clamp(mean(occs[occs > 0]), max=occ_thre); nan (no positive) -> all empty
        thre = min(float(positive.mean()), occ_thre) if positive.size else np.inf
        self.occs.set_data(Tensor(occs))
        self.binaries.set_data(Tensor((occs > thre).reshape(self.binaries.shape)))

    def construct(self, *args, **kwargs):
        return self.sampling(*args, **kwargs)


# nerfacc's name, for readers of the original code
OccGridEstimator = OccupancyGrid

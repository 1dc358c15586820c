"""Density on a lattice and its isosurface (marching cubes), densely or near the surface only.

The lattice is ``linspace(bbox[0], bbox[1], R)`` per axis, indexed (x, y, z). ``fn`` maps [N, 3]
float32 points (a MindSpore Tensor) to [N, 1] values and is called ``chunk`` points at a time, so
memory stays bounded at any resolution.

Surface-only (coarse to fine): the points whose three indices are multiples of ``stride`` (and
the last index) form a coarse sub-lattice of the same lattice; it is evaluated first. A block of
``stride``^3 fine cells whose 8 coarse corners all lie on one side of the threshold, further from
it than the field changes between neighbouring coarse points there, is taken to hold no surface,
unless it neighbours (``dilate`` blocks) one that may. Only the
fine points of the remaining blocks are evaluated; the others get their block corner's value,
which lies on the same side. Marching cubes on that field gives the same triangles as on the dense
field, from the same exact values on every edge that crosses the surface (tests/test_mesh_export.py
checks it). What it can miss: a piece of surface that the coarse points do not see at all, e.g.
a floater smaller than ~``stride`` cells in an otherwise flat region, which outlier removal drops
anyway; ``surface_only: false`` evaluates everything.
"""
from typing import Callable, Iterable, Optional, Tuple, Union

import numpy as np
from mindspore import Tensor
from tqdm import tqdm

from .mesh_export import ColorMesh, MeshExportError

DEFAULT_CHUNK = 1 << 18
DEFAULT_STRIDE = 4


def _lattice_axes(bbox: np.ndarray, resolution: int):
    r = int(resolution)
    if r < 2:
        raise MeshExportError(f"resolution must be at least 2, got {r}")
    return [np.linspace(lo, hi, r, dtype=np.float32) for lo, hi in zip(bbox[0], bbox[1])]


def _index_chunks(n: int, chunk: int) -> Iterable[Tuple[int, int]]:
    step = int(chunk) if chunk and chunk > 0 else max(n, 1)
    return ((s, min(s + step, n)) for s in range(0, n, step))


def _evaluate_flat(fn: Callable[[Tensor], Tensor], axes, flat_indices, n: int, chunk: int, desc: str,
                   progress: bool) -> np.ndarray:
    """``fn`` at lattice points given by flat (x, y, z) indices: an int array, or None for all
    ``n`` points in order (the indices are then never materialised)."""
    shape = tuple(len(a) for a in axes)
    out = np.empty(n, np.float32)
    starts = list(_index_chunks(n, chunk))
    for s, e in tqdm(starts, desc=desc, unit="chunk", dynamic_ncols=True, leave=False, disable=not progress):
        idx = np.arange(s, e) if flat_indices is None else flat_indices[s:e]
        i, j, k = np.unravel_index(idx, shape)
        points = np.stack([axes[0][i], axes[1][j], axes[2][k]], -1)
        out[s:e] = fn(Tensor(points)).asnumpy().reshape(-1)
    return out


def evaluate_grid(fn: Callable[[Tensor], Tensor], bbox: np.ndarray, resolution: int,
                  chunk: int = DEFAULT_CHUNK, progress: bool = False) -> np.ndarray:
    """Dense: ``fn`` at every lattice point, an [R, R, R] float32 array indexed (x, y, z)."""
    axes = _lattice_axes(bbox, resolution)
    r = len(axes[0])
    return _evaluate_flat(fn, axes, None, r ** 3, chunk, f"density {r}^3", progress).reshape(r, r, r)


def auto_threshold(values: np.ndarray, eps: float = 1.0e-5, weights: Optional[np.ndarray] = None) -> float:
    """threestudio's ``isosurface_threshold: auto``: the mean density where it exceeds eps
    (weighted: each value stands for ``weights`` lattice points)."""
    positive = values > eps
    if not positive.any():
        raise MeshExportError("the field is empty (no density above 1e-5 anywhere on the grid): nothing to export")
    if weights is None:
        return float(values[positive].mean())
    return float(np.average(values[positive], weights=weights[positive]))


def resolve_threshold(values: np.ndarray, threshold: Union[float, str], weights: Optional[np.ndarray] = None) -> float:
    if isinstance(threshold, str):
        if threshold.strip().lower() != "auto":
            try:
                return float(threshold)
            except ValueError:
                raise MeshExportError(f"threshold must be a number or 'auto', got '{threshold}'") from None
        return auto_threshold(values, weights=weights)
    return float(threshold)


def check_level(lo: float, hi: float, threshold: float):
    """One line with a concrete way out when ``threshold`` is outside the field's range
    ('auto' always lies inside the range of a non-empty field)."""
    if not lo < threshold < hi:
        direction = "lower" if threshold >= hi else "higher"
        raise MeshExportError(
            f"empty surface at threshold {threshold:g}: the density ranges over [{lo:.4g}, {hi:.4g}] "
            f"on the grid; use a {direction} threshold or 'auto'")


def coarse_indices(resolution: int, stride: int) -> np.ndarray:
    """Indices of the coarse sub-lattice along one axis: multiples of ``stride`` and the last."""
    return np.unique(np.append(np.arange(0, resolution, stride), resolution - 1))


def _shift_max(a: np.ndarray, out: np.ndarray):
    """out = max(out, a shifted by one in each of the 6 axis directions)."""
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        np.maximum(out[tuple(lo)], a[tuple(hi)], out=out[tuple(lo)])
        np.maximum(out[tuple(hi)], a[tuple(lo)], out=out[tuple(hi)])


def _active_blocks(coarse: np.ndarray, level: float, dilate: int) -> np.ndarray:
    """Blocks (between consecutive coarse points) that may hold the surface: their corners
    straddle the level, or a corner is closer to it than the field varies between neighbouring
    coarse points around it (a thin sheet or peak between two coarse planes); then dilated."""
    n = tuple(np.array(coarse.shape) - 1)
    inside = coarse > level
    # per coarse point: the largest change to a neighbour, then the largest of that around it
    variation = np.zeros(coarse.shape, np.float32)
    for axis in range(3):
        step = np.abs(np.diff(coarse, axis=axis))
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        np.maximum(variation[tuple(lo)], step, out=variation[tuple(lo)])
        np.maximum(variation[tuple(hi)], step, out=variation[tuple(hi)])
    spread = variation.copy()
    _shift_max(variation, spread)
    near = np.abs(coarse - level) <= spread
    any_in = np.zeros(n, bool)
    all_in = np.ones(n, bool)
    any_near = np.zeros(n, bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                corner = (slice(dx, dx + n[0]), slice(dy, dy + n[1]), slice(dz, dz + n[2]))
                any_in |= inside[corner]
                all_in &= inside[corner]
                any_near |= near[corner]
    active = (any_in & ~all_in) | any_near
    for _ in range(int(dilate)):
        grown = active.copy()
        _shift_max(active, grown)
        active = grown
    return active


def _point_blocks(resolution: int, ci: np.ndarray):
    """Per fine index along one axis: the blocks whose closed range contains it (lower, upper)
    and the coarse point that is the lower corner of the first of them."""
    p = np.arange(resolution)
    corner = np.searchsorted(ci, p, side="right") - 1  # coarse point at or below p
    n_blocks = len(ci) - 1
    upper = np.minimum(corner, n_blocks - 1)  # block [ci[b], ci[b+1]] with ci[b] <= p
    lower = np.where(np.isin(p, ci) & (p > 0), corner - 1, upper)  # p on a block face: also the block below
    return lower, upper, corner


def evaluate_surface_grid(fn: Callable[[Tensor], Tensor], bbox: np.ndarray, resolution: int,
                          threshold: Union[float, str], chunk: int = DEFAULT_CHUNK, stride: int = DEFAULT_STRIDE,
                          dilate: int = 1, progress: bool = False) -> Tuple[np.ndarray, float, int]:
    """Surface-only evaluation (see the module doc): (field [R, R, R] float32 whose marching cubes
    equal the dense field's, threshold used, number of points evaluated). 'auto' takes the mean
    over the coarse sub-lattice, each coarse point weighted by the number of fine points nearest
    to it (within 0.1% of the dense mean at 256^3 on a blob); the range check is on the coarse
    values too, before any fine work."""
    axes = _lattice_axes(bbox, resolution)
    r = len(axes[0])
    ci = coarse_indices(r, max(int(stride), 1))
    nc = len(ci)
    coarse_flat = np.ravel_multi_index(np.meshgrid(ci, ci, ci, indexing="ij"), (r, r, r)).reshape(-1)
    coarse = _evaluate_flat(fn, axes, coarse_flat, nc ** 3, chunk, f"density {nc}^3 (coarse)", progress)
    del coarse_flat
    coarse = coarse.reshape(nc, nc, nc)
    nearest = ci[np.abs(np.arange(r)[:, None] - ci[None, :]).argmin(1)]
    w = np.bincount(np.searchsorted(ci, nearest), minlength=nc).astype(np.float64)
    level = resolve_threshold(coarse, threshold, w[:, None, None] * w[None, :, None] * w[None, None, :])
    check_level(float(coarse.min()), float(coarse.max()), level)
    active = _active_blocks(coarse, level, dilate)
    lower, upper, corner = _point_blocks(r, ci)
    # fine points needed: those of an active block; built one x-plane at a time (bounded memory)
    needed = []
    for x in range(r):
        plane = np.zeros((r, r), bool)
        for bx in {int(lower[x]), int(upper[x])}:
            rows = active[bx]
            for by in (lower, upper):
                for bz in (lower, upper):
                    plane |= rows[by[:, None], bz[None, :]]
        idx = np.flatnonzero(plane)
        if idx.size:
            needed.append(idx + x * r * r)
    needed = np.concatenate(needed) if needed else np.zeros(0, np.int64)
    values = _evaluate_flat(fn, axes, needed, len(needed), chunk, f"density {r}^3 (near the surface)", progress)
    field = np.empty((r, r, r), np.float32)
    for x in range(r):  # every point first takes its block corner's value (same side of the level)
        field[x] = coarse[corner[x]][corner[:, None], corner[None, :]]
    field.reshape(-1)[needed] = values
    return field, level, int(nc ** 3 + len(needed))


def marching_cubes(field: np.ndarray, threshold: float, bbox: np.ndarray) -> ColorMesh:
    """Surface ``density == threshold`` of an [R, R, R] lattice over ``bbox`` (world coordinates),
    oriented outwards (towards lower density)."""
    import mcubes

    check_level(float(field.min()), float(field.max()), threshold)
    vertices, faces = mcubes.marching_cubes(field, threshold)
    r = field.shape[0]
    scale = (bbox[1] - bbox[0]) / (r - 1)
    vertices = (bbox[0] + vertices * scale).astype(np.float32)
    # PyMCubes winds the triangles counter-clockwise seen from the lower values (outside a
    # density), i.e. outward normals: keep them (the tests check the signed volume)
    return ColorMesh(vertices, faces.astype(np.int64))

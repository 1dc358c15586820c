"""UV atlas (xatlas) and a CPU texture baker: threestudio bakes with nvdiffrast on CUDA; this
rasterises the triangles in UV space with NumPy, so the same texture comes out on any machine.

Conventions: ``uv`` in [0, 1] with the origin bottom-left (OBJ, trimesh); texture row 0 is the top
(v = 1), texel (row i, column j) has its centre at u = (j + 0.5) / W, v = 1 - (i + 0.5) / H.

Baking: every texel whose centre lies in a triangle gets that triangle's barycentrics; every
empty texel within ``ring`` texels of a triangle gets the closest point of the closest triangle
(conservative rasterisation). So a bilinear lookup anywhere on the surface reads only baked texels
(no dark seams), and the ring holds the colour of the surface next to it, not a copy. 3D points
are interpolated with the barycentrics and coloured by the caller's ``query``.
"""
from typing import Callable, Dict, Optional, Tuple

import numpy as np

DEFAULT_PADDING = 4  # texels between charts (xatlas PackOptions.padding)
DEFAULT_RING = 2  # texels baked around each chart: >= sqrt(2) covers every bilinear footprint


def unwrap_uv(vertices: np.ndarray, faces: np.ndarray, texture_size: int,
              chart_options: Optional[Dict] = None, pack_options: Optional[Dict] = None):
    """xatlas charts packed into one ``texture_size``^2 atlas: (uv [T, 2] float32, uv_faces [F, 3]
    int64 into uv, vmapping [T] int64: the mesh vertex of each uv vertex). The options are
    threestudio's ``xatlas_chart_options`` / ``xatlas_pack_options`` (xatlas attribute names)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    chart, pack = xatlas.ChartOptions(), xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = DEFAULT_PADDING
    pack.bilinear = True
    for target, options in ((chart, chart_options), (pack, pack_options)):
        for key, value in (options or {}).items():
            setattr(target, key, value)
    atlas.generate(chart, pack)
    vmapping, indices, uv = atlas[0]
    return np.asarray(uv, np.float32), np.asarray(indices, np.int64), np.asarray(vmapping, np.int64)


def _to_pixels(uv: np.ndarray, size: int) -> np.ndarray:
    """uv -> continuous texel coordinates (column, row) whose integers are texel centres."""
    return np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], -1).astype(np.float64)


def _cross(u, v):
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _barycentrics(p, a, b, c):
    """Barycentrics [N, 3] of points p [N, 2] in triangles (a, b, c) [N, 2] (either winding);
    NaN-free: degenerate triangles give a point outside."""
    area2 = _cross(b - a, c - a)
    ok = np.abs(area2) > 1e-12
    safe = np.where(ok, area2, 1.0)
    w0, w1 = _cross(b - p, c - p) / safe, _cross(c - p, a - p) / safe
    w0 = np.where(ok, w0, -1.0)
    return np.stack([w0, w1, 1.0 - w0 - w1], -1)


def _closest_on_edges(p, a, b, c):
    """Squared distance from points p [N, 2] to the edges of triangles (a, b, c) and the
    barycentrics [N, 3] of the closest point."""
    best_d2 = np.full(len(p), np.inf)
    best = np.zeros((len(p), 3))
    for (s, e), (i, j) in (((a, b), (0, 1)), ((b, c), (1, 2)), ((c, a), (2, 0))):
        d = e - s
        t = np.clip(np.sum((p - s) * d, -1) / np.maximum(np.sum(d * d, -1), 1e-20), 0.0, 1.0)
        d2 = np.sum((s + t[:, None] * d - p) ** 2, -1)
        closer = d2 < best_d2
        best[closer] = 0.0
        best[closer, i], best[closer, j] = 1.0 - t[closer], t[closer]
        best_d2 = np.where(closer, d2, best_d2)
    return best_d2, best


def _candidates(tri: np.ndarray, size: int, margin: float, max_candidates: int):
    """Per group of triangles: (face ids, column, row) of every texel centre in each triangle's
    bounding box grown by ``margin`` texels (at most ~max_candidates per group)."""
    lo = np.clip(np.ceil(tri.min(1) - margin), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(tri.max(1) + margin), -1, size - 1).astype(np.int64)
    nx, ny = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0), np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    counts = nx * ny
    ends = np.cumsum(counts)
    f0 = 0
    while f0 < len(tri):
        f1 = max(int(np.searchsorted(ends, (ends[f0 - 1] if f0 else 0) + max_candidates, side="right")), f0 + 1)
        c = counts[f0:f1]
        f = np.repeat(np.arange(f0, f1), c)
        local = np.arange(len(f)) - np.repeat(np.cumsum(c) - c, c)
        yield f, lo[f, 0] + local % nx[f], lo[f, 1] + local // nx[f]
        f0 = f1


def rasterize_uv(uv: np.ndarray, uv_faces: np.ndarray, size: int, ring: float = DEFAULT_RING,
                 max_candidates: int = 1 << 22) -> Tuple[np.ndarray, np.ndarray]:
    """(face [H, W] int64, -1 where empty; barycentrics [H, W, 3] float32) of a ``size``^2 texture:
    the triangle that holds each texel centre, else the closest one within ``ring`` texels."""
    tri = _to_pixels(uv, size)[uv_faces]  # [F, 3, 2]
    face_of = np.full(size * size, -1, np.int64)
    bary_of = np.zeros((size * size, 3), np.float32)
    # pass 1: texel centres inside a triangle (one on a shared edge: either triangle, same point)
    for f, x, y in _candidates(tri, size, 0.0, max_candidates):
        bary = _barycentrics(np.stack([x, y], -1).astype(np.float64), tri[f, 0], tri[f, 1], tri[f, 2])
        inside = bary.min(-1) >= -1e-9
        texel = (y * size + x)[inside]
        face_of[texel], bary_of[texel] = f[inside], bary[inside]
    # pass 2: empty texels within ``ring`` of a triangle take the closest point of the closest one
    best_d2 = np.full(size * size, np.inf)
    for f, x, y in _candidates(tri, size, ring, max_candidates):
        texel = y * size + x
        empty = face_of[texel] < 0
        f, texel = f[empty], texel[empty]
        d2, bary = _closest_on_edges(np.stack([x[empty], y[empty]], -1).astype(np.float64),
                                     tri[f, 0], tri[f, 1], tri[f, 2])
        keep = d2 <= ring * ring + 1e-9
        texel, d2, f, bary = texel[keep], d2[keep], f[keep], bary[keep]
        order = np.lexsort((d2, texel))  # per texel the closest candidate first
        texel, d2, f, bary = texel[order], d2[order], f[order], bary[order]
        first = np.ones(len(texel), bool)
        first[1:] = texel[1:] != texel[:-1]
        better = first & (d2 < best_d2[texel])
        texel = texel[better]
        best_d2[texel], bary_of[texel] = d2[better], bary[better]
        face_of[texel] = -2 - f[better]  # marked as ring until pass 2 ends (stays "empty" above)
    ring_texels = face_of <= -2
    face_of[ring_texels] = -2 - face_of[ring_texels]
    return face_of.reshape(size, size), bary_of.reshape(size, size, 3)


def bake_texture(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, uv_faces: np.ndarray, size: int,
                 query: Callable[[np.ndarray], np.ndarray], ring: float = DEFAULT_RING):
    """(texture [H, W, 3] float32, mask [H, W] bool of baked texels). ``query`` maps [N, 3] world
    points to [N, 3] colours; empty texels get the mean colour (what mip-maps blend towards)."""
    face_of, bary = rasterize_uv(uv, uv_faces, size, ring)
    mask = face_of >= 0
    f, w = face_of[mask], bary[mask]
    corners = vertices[faces[f]]  # [N, 3 corners, 3]
    points = np.einsum("nc,ncd->nd", w, corners).astype(np.float32)
    colors = np.asarray(query(points), np.float32)
    texture = np.empty((size, size, 3), np.float32)
    texture[...] = colors.mean(0) if len(colors) else 0.5
    texture[mask] = colors
    return texture, mask


def _bilinear_taps(uv: np.ndarray, height: int, width: int):
    x = uv[:, 0] * width - 0.5
    y = (1.0 - uv[:, 1]) * height - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xs = np.clip([x0, x0 + 1], 0, width - 1)
    ys = np.clip([y0, y0 + 1], 0, height - 1)
    weights = [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]
    taps = [(ys[0], xs[0]), (ys[0], xs[1]), (ys[1], xs[0]), (ys[1], xs[1])]
    return taps, weights


def sample_bilinear(texture: np.ndarray, uv: np.ndarray, mask: Optional[np.ndarray] = None):
    """Bilinear texture lookup at uv [N, 2] (edges clamped), as a viewer does it. With ``mask``:
    (colours [N, C], whether all four texels read are baked [N])."""
    h, w = texture.shape[:2]
    taps, weights = _bilinear_taps(np.asarray(uv, np.float64), h, w)
    out = sum(wt * texture[r, c].astype(np.float64) for (r, c), wt in zip(taps, weights))
    if mask is None:
        return out
    return out, np.logical_and.reduce([mask[r, c] for r, c in taps])

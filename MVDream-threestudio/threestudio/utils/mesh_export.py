"""Coloured triangle meshes from a trained implicit geometry (``--export``, extract_color_mesh.py).

Pipeline (all on the host; only the field evaluations run in MindSpore):
  1. density (``geometry.forward_field``) on an R x R x R lattice spanning the geometry's bbox,
     evaluated ``chunk`` points at a time (memory stays bounded at any resolution);
  2. marching cubes (PyMCubes) at a density threshold: the geometry's ``isosurface_threshold``,
     or ``"auto"``: the mean of the densities above 1e-5 (threestudio's rule);
  3. optionally drop small connected components (largest only, or fewer faces than a threshold);
  4. per-vertex albedo: ``geometry.export(points)["features"]`` -> ``material.export(features)``;
  5. y-up file (.obj / .ply / .glb via trimesh) with vertex colours and normals, written to a
     temporary file then renamed (no half-written mesh, never overwriting unless asked).

Axes: threestudio's world is z-up and its front view (azimuth 0) looks from +x. Files are y-up as
glTF and most viewers expect: (x, y, z) -> (y, z, x). That is a rotation (winding stays outward)
that puts up on +y and the object's front on +z, towards a viewer's default camera.
"""
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
from mindspore import Tensor
from tqdm import tqdm

logger = logging.getLogger("threestudio")

DEFAULT_CHUNK = 1 << 18
FORMATS = {".obj": "obj", ".ply": "ply", ".glb": "glb"}
# threestudio world (z-up, front +x) -> file (y-up, front +z): new = old[:, Y_UP_AXES]
Y_UP_AXES = (1, 2, 0)


class MeshExportError(ValueError):
    """An export that cannot be done (one line, meant for the user)."""


@dataclass
class ColorMesh:
    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    colors: Optional[np.ndarray] = None  # [V, 3] float32 in [0, 1]

    def to_trimesh(self):
        import trimesh

        colors = None
        if self.colors is not None:
            rgb = np.round(np.clip(self.colors, 0.0, 1.0) * 255).astype(np.uint8)
            colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=colors, process=False)

    @property
    def vertex_normals(self) -> np.ndarray:
        return np.asarray(self.to_trimesh().vertex_normals, np.float32)


# ---------------------------------------------------------------------------- field sampling
def _chunks(n: int, chunk: int, desc: str, progress: bool):
    starts = range(0, n, max(int(chunk), 1) if chunk > 0 else max(n, 1))
    return tqdm(starts, desc=desc, unit="chunk", dynamic_ncols=True, leave=False, disable=not progress)


def evaluate_grid(fn: Callable[[Tensor], Tensor], bbox: np.ndarray, resolution: int,
                  chunk: int = DEFAULT_CHUNK, progress: bool = False) -> np.ndarray:
    """``fn`` ([N, 3] points -> [N, 1]) on the lattice ``linspace(bbox[0], bbox[1], R)`` per axis,
    as an [R, R, R] float32 array indexed (x, y, z). Points are built chunk by chunk."""
    r = int(resolution)
    if r < 2:
        raise MeshExportError(f"resolution must be at least 2, got {r}")
    axes = [np.linspace(lo, hi, r, dtype=np.float32) for lo, hi in zip(bbox[0], bbox[1])]
    field = np.empty(r ** 3, np.float32)
    for s in _chunks(r ** 3, chunk, f"density {r}^3", progress):
        e = min(s + (chunk if chunk > 0 else r ** 3), r ** 3)
        i, j, k = np.unravel_index(np.arange(s, e), (r, r, r))
        points = np.stack([axes[0][i], axes[1][j], axes[2][k]], -1)
        field[s:e] = fn(Tensor(points)).asnumpy().reshape(-1)
    return field.reshape(r, r, r)


def auto_threshold(field: np.ndarray, eps: float = 1.0e-5) -> float:
    """threestudio's ``isosurface_threshold: auto``: the mean density where it exceeds eps."""
    positive = field[field > eps]
    if positive.size == 0:
        raise MeshExportError("the field is empty (no density above 1e-5 anywhere on the grid): nothing to export")
    return float(positive.mean())


def resolve_threshold(field: np.ndarray, threshold: Union[float, str]) -> float:
    if isinstance(threshold, str):
        if threshold.strip().lower() != "auto":
            try:
                return float(threshold)
            except ValueError:
                raise MeshExportError(f"threshold must be a number or 'auto', got '{threshold}'") from None
        return auto_threshold(field)
    return float(threshold)


def marching_cubes(field: np.ndarray, threshold: float, bbox: np.ndarray) -> ColorMesh:
    """Surface ``density == threshold`` of an [R, R, R] lattice over ``bbox`` (world coordinates),
    oriented outwards (towards lower density)."""
    import mcubes

    lo, hi = float(field.min()), float(field.max())
    if not lo < threshold < hi:
        # one line with a concrete way out; 'auto' always lies inside the range of a non-empty field
        direction = "lower" if threshold >= hi else "higher"
        raise MeshExportError(
            f"empty surface at threshold {threshold:g}: the density ranges over [{lo:.4g}, {hi:.4g}] "
            f"on the grid; use a {direction} threshold or 'auto'")
    vertices, faces = mcubes.marching_cubes(field, threshold)
    r = field.shape[0]
    scale = (bbox[1] - bbox[0]) / (r - 1)
    vertices = (bbox[0] + vertices * scale).astype(np.float32)
    # PyMCubes winds the triangles counter-clockwise seen from the lower values (outside a
    # density), i.e. outward normals: keep them (the tests check the signed volume)
    faces = faces.astype(np.int64)
    return ColorMesh(vertices, faces)


def drop_small_components(mesh: ColorMesh, keep_largest: bool = False,
                          min_faces: Union[int, float] = 0) -> ColorMesh:
    """Keep only the largest connected component (``keep_largest``) or those with at least
    ``min_faces`` faces (a float < 1: that fraction of all faces, as threestudio's
    ``isosurface_outlier_n_faces_threshold``)."""
    import trimesh

    n_faces = len(mesh.faces)
    if n_faces == 0:
        return mesh
    labels = trimesh.graph.connected_component_labels(
        trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).face_adjacency, node_count=n_faces)
    sizes = np.bincount(labels)
    if keep_largest:
        keep_face = labels == int(np.argmax(sizes))
    else:
        limit = min_faces * n_faces if isinstance(min_faces, float) and min_faces < 1 else min_faces
        keep_face = sizes[labels] >= limit
    faces = mesh.faces[keep_face]
    used = np.unique(faces)
    remap = np.full(len(mesh.vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    colors = None if mesh.colors is None else mesh.colors[used]
    return ColorMesh(mesh.vertices[used], remap[faces], colors)


def vertex_colors(geometry, material, vertices: np.ndarray, chunk: int = DEFAULT_CHUNK,
                  progress: bool = False) -> Optional[np.ndarray]:
    """Albedo [V, 3] in [0, 1] at world points from the geometry's features and the material's
    ``export``; None when the geometry has no features."""
    parts = []
    for s in _chunks(len(vertices), chunk, "colours", progress):
        points = Tensor(vertices[s:s + (chunk if chunk > 0 else len(vertices))].astype(np.float32))
        features = geometry.export(points).get("features")
        if features is None:
            return None
        albedo = material.export(features=features).get("albedo")
        if albedo is None:
            return None
        parts.append(albedo.asnumpy()[:, :3])
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 3), np.float32)


def extract_color_mesh(geometry, material, resolution: int = 256, threshold: Union[float, str, None] = None,
                       chunk: int = DEFAULT_CHUNK, keep_largest: bool = False,
                       min_component_faces: Union[int, float] = 0,
                       progress: bool = False) -> Tuple[ColorMesh, float]:
    """(mesh in threestudio world coordinates, threshold used). ``threshold`` None: the
    geometry's ``isosurface_threshold`` (a number or "auto")."""
    geometry.set_train(False)
    material.set_train(False)
    bbox = geometry.bbox.asnumpy().astype(np.float32)
    field = evaluate_grid(lambda p: geometry.forward_field(p)[0], bbox, resolution, chunk, progress)
    if threshold is None:
        threshold = geometry.cfg.isosurface_threshold
    threshold = resolve_threshold(field, threshold)
    mesh = marching_cubes(field, threshold, bbox)
    del field
    if keep_largest or min_component_faces:
        mesh = drop_small_components(mesh, keep_largest, min_component_faces)
    mesh.colors = vertex_colors(geometry, material, mesh.vertices, chunk, progress)
    if mesh.colors is None:
        logger.warning("the geometry has no features: the mesh has no colours")
    return mesh, threshold


def to_y_up(mesh: ColorMesh) -> ColorMesh:
    """threestudio's z-up world -> the y-up convention of mesh files (see the module doc)."""
    return ColorMesh(np.ascontiguousarray(mesh.vertices[:, Y_UP_AXES]), mesh.faces, mesh.colors)


def from_y_up(vertices: np.ndarray) -> np.ndarray:
    """Inverse of ``to_y_up`` for points (file coordinates -> threestudio world)."""
    return np.ascontiguousarray(vertices[:, np.argsort(Y_UP_AXES)])


# ---------------------------------------------------------------------------- files
def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output(path: str, overwrite: bool = False) -> str:
    """Fail early (before any long computation) on a bad output path; returns the format."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise MeshExportError(f"unknown mesh format '{ext or path}': use .obj, .ply or .glb")
    if os.path.isdir(path):
        raise MeshExportError(f"output {path} is a directory")
    if os.path.exists(path) and not overwrite:
        raise MeshExportError(f"output {path} exists: choose another --output or pass --overwrite")
    ancestor = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise MeshExportError(f"cannot write {path}: {ancestor} is not a writable directory")
    return FORMATS[ext]


def encode_mesh(mesh: ColorMesh, fmt: str) -> bytes:
    """File bytes with vertex colours and vertex normals."""
    tm = mesh.to_trimesh()
    if fmt == "obj":
        data = tm.export(file_type="obj", include_normals=True, include_color=True, include_texture=False)
    elif fmt == "ply":
        data = tm.export(file_type="ply", vertex_normal=True, encoding="binary")
    elif fmt == "glb":
        data = tm.export(file_type="glb", include_normals=True)
    else:
        raise MeshExportError(f"unknown mesh format '{fmt}'")
    return data.encode() if isinstance(data, str) else bytes(data)


def write_mesh(mesh: ColorMesh, path: str, overwrite: bool = False) -> str:
    """Write ``mesh`` (already in file coordinates) atomically: temporary file, then rename.
    Directories it had to create are removed again if the write fails."""
    fmt = check_output(path, overwrite)
    data = encode_mesh(mesh, fmt)
    directory = os.path.dirname(os.path.abspath(path))
    created = []
    probe = directory
    while not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if os.path.exists(path) and not overwrite:  # appeared meanwhile: still never overwrite
            raise MeshExportError(f"output {path} exists: choose another --output or pass --overwrite")
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise MeshExportError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if not os.path.exists(path):
            for d in created:  # deepest first
                if os.path.isdir(d) and not os.listdir(d):
                    os.rmdir(d)
    return path


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class MeshExporterConfig:
    """``system.exporter`` of threestudio's ``mesh-exporter`` (its keys, so configs parse).

    Port: colours are stored per vertex (no UV atlas / texture baking, which needs xatlas and
    nvdiffrast); ``fmt`` picks the file type: obj-mtl / obj -> .obj, ply, glb."""

    fmt: str = "obj-mtl"
    save_name: str = "model"
    save_normal: bool = False
    save_uv: bool = True
    save_texture: bool = True
    texture_size: int = 1024
    texture_format: str = "jpg"
    xatlas_chart_options: Optional[dict] = None
    xatlas_pack_options: Optional[dict] = None
    context_type: str = "gl"

    @property
    def extension(self) -> str:
        ext = {"obj-mtl": ".obj", "obj": ".obj", "ply": ".ply", "glb": ".glb"}.get(self.fmt)
        if ext is None:
            raise MeshExportError(f"system.exporter.fmt '{self.fmt}' is not supported: use obj-mtl, obj, ply or glb")
        return ext


@dataclass
class TrainedFields:
    geometry: object
    material: object
    global_step: int
    epoch: int
    system_cfg: object  # the parsed system config


def trial_dir_of(ckpt_path: str) -> str:
    """``<trial>/ckpts/x.ckpt`` -> ``<trial>``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path)))


def config_next_to(ckpt_path: str) -> str:
    return os.path.join(trial_dir_of(ckpt_path), "configs", "parsed.yaml")


def load_trained_fields(ckpt_path: str, system_type: str, system_cfg) -> TrainedFields:
    """Geometry and material of a system config, loaded from a training checkpoint (the rest
    of the system, guidance included, is never built). Refuses a checkpoint whose geometry or
    material config differs from ``system_cfg``'s."""
    import threestudio
    from threestudio.systems.base import assign_state_arrays
    from .checkpoint import check_fingerprint, fingerprint, load_checkpoint
    from .config import parse_structured

    arrays, meta = load_checkpoint(ckpt_path)
    system_cls = threestudio.find(system_type)
    scfg = parse_structured(system_cls.Config, system_cfg)
    sections = {k: v for k, v in system_cls.config_fingerprint_sections(scfg).items()
                if k in ("geometry", "material")}
    stored = meta.get("fingerprint", {})
    check_fingerprint(ckpt_path, {"fingerprint": {k: stored.get(k) for k in sections}}, fingerprint(sections))
    geometry = threestudio.find(scfg.geometry_type)(scfg.geometry)
    material = threestudio.find(scfg.material_type)(scfg.material)
    for name, module in (("geometry", geometry), ("material", material)):
        prefix = f"state.{name}."
        assign_state_arrays({n: p for n, p in module.parameters_and_names()},
                            {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                            source=ckpt_path)
    step, epoch = int(meta.get("global_step", 0)), int(meta.get("epoch", 0))
    for module in (geometry, material):  # step-dependent state, e.g. the annealed blob std
        module.do_update_step(epoch, step, on_load_weights=True)
    return TrainedFields(geometry, material, step, epoch, scfg)


def default_output(trial_dir: str, global_step: int, name: str = "model", ext: str = ".obj") -> str:
    return os.path.join(trial_dir, "save", f"it{global_step}-export", f"{name}{ext}")


def export_mesh(fields: TrainedFields, output: str, resolution: int, threshold=None, keep_largest: bool = False,
                min_component_faces: Union[int, float] = 0, chunk: int = DEFAULT_CHUNK,
                overwrite: bool = False, progress: bool = True) -> Dict[str, object]:
    """Extract, colour, convert to y-up and write; returns a summary (path, counts, threshold)."""
    check_output(output, overwrite)
    requested = fields.geometry.cfg.isosurface_threshold if threshold is None else threshold
    mesh, used = extract_color_mesh(fields.geometry, fields.material, resolution, threshold, chunk,
                                    keep_largest, min_component_faces, progress)
    write_mesh(to_y_up(mesh), output, overwrite)
    return {"path": output, "vertices": len(mesh.vertices), "faces": len(mesh.faces), "threshold": used,
            "auto": str(requested).strip().lower() == "auto", "colored": mesh.colors is not None}

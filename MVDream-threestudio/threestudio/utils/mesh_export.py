"""Triangle meshes for export: the mesh record, y-up axes, component cleanup and decimation.

The export pipeline (``threestudio.models.exporters.mesh_exporter``) puts these together with
``isosurface`` (density lattice, marching cubes), ``uv_atlas`` (UV unwrapping and the CPU texture
baker) and ``mesh_io`` (file encoders, atomic writes).

Axes: threestudio's world is z-up and its front view (azimuth 0) looks from +x. Files are y-up as
glTF and most viewers expect: (x, y, z) -> (y, z, x). That is a rotation (winding stays outward)
that puts up on +y and the object's front on +z, towards a viewer's default camera.
"""
from dataclasses import dataclass, replace
from typing import Optional, Union

import numpy as np

# threestudio world (z-up, front +x) -> file (y-up, front +z): new = old[:, Y_UP_AXES]
Y_UP_AXES = (1, 2, 0)


class MeshExportError(ValueError):
    """An export that cannot be done (one line, meant for the user)."""


@dataclass
class ColorMesh:
    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    colors: Optional[np.ndarray] = None  # [V, 3] float32 in [0, 1]
    uv: Optional[np.ndarray] = None  # [T, 2] float32, origin bottom-left (OBJ's convention)
    uv_faces: Optional[np.ndarray] = None  # [F, 3] int64 into uv (a UV seam splits a vertex)
    texture: Optional[np.ndarray] = None  # [H, W, 3] float32 in [0, 1], row 0 = top (v = 1)

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


def decimate(mesh: ColorMesh, target_faces: int) -> ColorMesh:
    """Quadric edge-collapse decimation to about ``target_faces`` faces (fast-simplification,
    the backend trimesh's own ``simplify_quadric_decimation`` uses). Runs before UV unwrapping
    and colouring, so colours and texture are queried on the final surface."""
    import fast_simplification

    n = len(mesh.faces)
    if not 0 < target_faces <= n:
        raise MeshExportError(f"target_faces must be in 1..{n} (the extracted mesh has {n} faces), got {target_faces}")
    if target_faces == n:
        return mesh
    vertices, faces = fast_simplification.simplify(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32),
                                                   target_reduction=1.0 - target_faces / n)
    return ColorMesh(np.asarray(vertices, np.float32), np.asarray(faces, np.int64))


def to_y_up(mesh: ColorMesh) -> ColorMesh:
    """threestudio's z-up world -> the y-up convention of mesh files (see the module doc)."""
    return replace(mesh, vertices=np.ascontiguousarray(mesh.vertices[:, Y_UP_AXES]))


def from_y_up(vertices: np.ndarray) -> np.ndarray:
    """Inverse of ``to_y_up`` for points (file coordinates -> threestudio world)."""
    return np.ascontiguousarray(vertices[:, np.argsort(Y_UP_AXES)])



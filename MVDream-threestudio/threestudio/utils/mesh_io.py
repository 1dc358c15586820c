"""Mesh files: names, encoders (obj + mtl + texture image, glb, ply) and atomic writes of a set.

A file set is written all or nothing: each file goes to a temporary name first, and only when
all are written are they renamed; on any failure the temporaries, the files already renamed and
the directories created for them are removed again. An existing file is never replaced unless
``overwrite``. Meshes arrive in file coordinates (y-up, see ``mesh_export``).
"""
import io
import os
import tempfile
from typing import Dict, List

import numpy as np

from .mesh_export import ColorMesh, MeshExportError

# file formats: threestudio's ``fmt`` values (obj-mtl, obj) and the port's glb and ply
FMT_EXTENSIONS = {"obj-mtl": ".obj", "obj": ".obj", "glb": ".glb", "ply": ".ply"}
EXTENSION_FMTS = {".obj": "obj", ".glb": "glb", ".ply": "ply"}
TEXTURE_FORMATS = ("png", "jpg")


def trial_dir_of(ckpt_path: str) -> str:
    """``<trial>/ckpts/x.ckpt`` -> ``<trial>``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path)))


def config_next_to(ckpt_path: str) -> str:
    return os.path.join(trial_dir_of(ckpt_path), "configs", "parsed.yaml")


def default_output(trial_dir: str, global_step: int, name: str = "model", ext: str = ".obj") -> str:
    return os.path.join(trial_dir, "save", f"it{global_step}-export", f"{name}{ext}")


def file_set(path: str, fmt: str, textured: bool, texture_format: str = "png") -> List[str]:
    """Every file an export to ``path`` writes: the mesh, then the material and texture."""
    stem = os.path.splitext(path)[0]
    if fmt == "obj-mtl":
        return [path, f"{stem}.mtl"] + ([f"{stem}_texture_kd.{texture_format}"] if textured else [])
    return [path]


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_outputs(paths: List[str], overwrite: bool = False):
    """Fail early (before any long computation) on an output that cannot be written."""
    for path in paths:
        if os.path.isdir(path):
            raise MeshExportError(f"output {path} is a directory")
        if os.path.exists(path) and not overwrite:
            raise MeshExportError(f"output {path} exists: choose another --output or pass --overwrite")
        ancestor = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
        if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
            raise MeshExportError(f"cannot write {path}: {ancestor} is not a writable directory")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise MeshExportError(f"cannot write {path}: the file is read-only")


def write_files(files: Dict[str, bytes], overwrite: bool = False) -> List[str]:
    """Write ``{path: bytes}`` atomically as one set (see the module doc)."""
    check_outputs(list(files), overwrite)
    created, temps, renamed = [], {}, []
    for directory in sorted({os.path.dirname(os.path.abspath(p)) for p in files}):
        probe = directory
        while not os.path.exists(probe):
            created.append(probe)
            probe = os.path.dirname(probe)
    try:
        for path, data in files.items():
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            fd, temps[path] = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for path in files:
            if os.path.exists(path) and not overwrite:  # appeared meanwhile: still never overwrite
                raise MeshExportError(f"output {path} exists: choose another --output or pass --overwrite")
        for path, tmp in temps.items():
            os.replace(tmp, path)
            renamed.append(path)
        temps = {}
    except OSError as err:
        raise MeshExportError(f"cannot write {list(files)[0]}: {err.strerror or err}") from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)
        if temps:  # failed: take back what this call put there
            for path in renamed:
                os.remove(path)
            for d in sorted(set(created), key=len, reverse=True):  # deepest first
                if os.path.isdir(d) and not os.listdir(d):
                    os.rmdir(d)
    return list(files)


# ---------------------------------------------------------------------------- encoders
def _rows(fmt: str, *columns: np.ndarray) -> str:
    """Text lines ``fmt % row`` of the stacked columns (np.savetxt, vectorised enough for 1M rows)."""
    buf = io.StringIO()
    np.savetxt(buf, np.concatenate([np.asarray(c).reshape(len(c), -1) for c in columns], 1), fmt=fmt)
    return buf.getvalue()


def encode_obj(mesh: ColorMesh, normals: bool, mtl_name: str = None) -> bytes:
    """OBJ text: ``v x y z [r g b]`` (vertex colours when present), ``vt``, ``vn`` and faces
    ``f v/vt/vn``; positions stay shared across UV seams (only the vt indices split)."""
    parts = []
    if mtl_name is not None:
        parts.append(f"mtllib {mtl_name}\ng object\nusemtl default\n")
    if mesh.colors is not None:
        parts.append(_rows("v %.6f %.6f %.6f %.4f %.4f %.4f", mesh.vertices, np.clip(mesh.colors, 0.0, 1.0)))
    else:
        parts.append(_rows("v %.6f %.6f %.6f", mesh.vertices))
    has_uv = mesh.uv is not None
    if has_uv:
        parts.append(_rows("vt %.6f %.6f", mesh.uv))
    if normals:
        parts.append(_rows("vn %.5f %.5f %.5f", mesh.vertex_normals))
    f = mesh.faces + 1
    if has_uv and normals:
        t = mesh.uv_faces + 1
        parts.append(_rows("f %d/%d/%d %d/%d/%d %d/%d/%d", np.stack([f, t, f], -1).reshape(-1, 9)))
    elif has_uv:
        parts.append(_rows("f %d/%d %d/%d %d/%d", np.stack([f, mesh.uv_faces + 1], -1).reshape(-1, 6)))
    elif normals:
        parts.append(_rows("f %d//%d %d//%d %d//%d", np.stack([f, f], -1).reshape(-1, 6)))
    else:
        parts.append(_rows("f %d %d %d", f))
    return "".join(parts).encode()


def encode_mtl(texture_name: str = None) -> bytes:
    lines = ["newmtl default", "Ka 0.0 0.0 0.0", "Kd 1.0 1.0 1.0", "Ks 0.0 0.0 0.0", "illum 1"]
    if texture_name is not None:
        lines.append(f"map_Kd {texture_name}")
    return ("\n".join(lines) + "\n").encode()


def texture_image(texture: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.round(np.clip(texture, 0.0, 1.0) * 255).astype(np.uint8), "RGB")


def encode_image(texture: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        texture_image(texture).save(buf, format="JPEG", quality=95)
    else:
        texture_image(texture).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _uv_split(mesh: ColorMesh):
    """(vertex of each uv vertex [T], normals of the unsplit mesh [V, 3]): glTF has one index
    per corner, so vertices on a UV seam are duplicated; their normals stay the smooth ones."""
    vertex_of = np.zeros(len(mesh.uv), np.int64)
    vertex_of[mesh.uv_faces.reshape(-1)] = mesh.faces.reshape(-1)
    return vertex_of, mesh.vertex_normals


def encode_glb(mesh: ColorMesh, normals: bool) -> bytes:
    """Binary glTF: with a texture, the texture embedded as the base colour of a matte PBR
    material (no COLOR_0: glTF would multiply it into the texture); else vertex colours."""
    import trimesh

    if mesh.texture is None:
        return bytes(mesh.to_trimesh().export(file_type="glb", include_normals=normals))
    vertex_of, smooth = _uv_split(mesh)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=texture_image(mesh.texture),
                                                   metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=mesh.uv, material=material)
    tm = trimesh.Trimesh(mesh.vertices[vertex_of], mesh.uv_faces, visual=visual, process=False)
    if normals:
        tm.vertex_normals = smooth[vertex_of]
    return bytes(tm.export(file_type="glb", include_normals=normals))


def encode_ply(mesh: ColorMesh, normals: bool) -> bytes:
    return bytes(mesh.to_trimesh().export(file_type="ply", vertex_normal=normals, encoding="binary"))


def encode_files(mesh: ColorMesh, paths: List[str], fmt: str, normals: bool, texture_format: str = "png"
                 ) -> Dict[str, bytes]:
    """``{path: bytes}`` for the paths of ``file_set``; the mesh is in file coordinates."""
    if fmt == "glb":
        return {paths[0]: encode_glb(mesh, normals)}
    if fmt == "ply":
        return {paths[0]: encode_ply(mesh, normals)}
    if fmt == "obj":
        return {paths[0]: encode_obj(mesh, normals)}
    if fmt != "obj-mtl":
        raise MeshExportError(f"unknown mesh format '{fmt}': use obj-mtl, obj, glb or ply")
    files = {paths[0]: encode_obj(mesh, normals, os.path.basename(paths[1]))}
    texture_name = os.path.basename(paths[2]) if len(paths) > 2 else None
    files[paths[1]] = encode_mtl(texture_name)
    if texture_name is not None:
        files[paths[2]] = encode_image(mesh.texture, texture_format)
    return files

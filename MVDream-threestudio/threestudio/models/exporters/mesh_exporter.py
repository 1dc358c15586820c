"""threestudio's ``mesh-exporter`` on the CPU: isosurface, cleanup, decimation, UV atlas, baked
albedo texture, y-up files. ``launch.py --export`` and ``extract_color_mesh.py`` both run it.

Pipeline (only the field queries run in MindSpore; everything else is NumPy on the host):
  1. density (``geometry.forward_field``) on an R^3 lattice over the geometry's bbox, near the
     surface only (``surface_only``, default) or everywhere; ``utils/isosurface.py``;
  2. marching cubes at ``threshold`` (a number, or 'auto': threestudio's mean density above 1e-5);
  3. cleanup: the largest component only, or threestudio's outlier rule
     (``geometry.isosurface_remove_outliers`` / ``isosurface_outlier_n_faces_threshold``);
  4. quadric decimation to ``target_faces`` (before unwrapping, so the texture keeps the detail
     the decimated geometry lost);
  5. UV atlas (xatlas) and the albedo baked into a ``texture_size``^2 texture on the CPU
     (``utils/uv_atlas.py``), when ``save_uv`` and ``save_texture`` and the format holds one;
  6. per-vertex albedo (always: every format that can store vertex colours gets them);
  7. y-up files written as one atomic set (``utils/mesh_io.py``).

Keys are threestudio's (``fmt``, ``save_name``, ``save_normal``, ``save_uv``, ``save_texture``,
``texture_size``, ``texture_format``, ``xatlas_chart_options``, ``xatlas_pack_options``) plus the
port's ``resolution``, ``threshold``, ``surface_only``, ``target_faces``, ``largest_component`` and
``chunk``. ``fmt``: obj-mtl (obj + mtl + texture image), obj (vertex colours, UVs), glb (texture
embedded, or vertex colours without a texture), ply (vertex colours).
"""
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
from mindspore import Tensor
from tqdm import tqdm

import threestudio

from ...utils import isosurface as iso
from ...utils import mesh_io
from ...utils import uv_atlas
from ...utils.mesh_export import ColorMesh, MeshExportError, decimate, drop_small_components, to_y_up
from .base import Exporter

logger = logging.getLogger("threestudio")
MAX_TEXTURE_SIZE = 8192


@dataclass
class ExportedMesh:
    mesh: ColorMesh  # in file coordinates (y-up), with colours / uv / texture as exported
    threshold: float
    auto: bool  # the threshold came from 'auto'
    extracted_faces: int  # before decimation
    evaluated_points: int  # density queries
    seconds: Dict[str, float]  # per stage
    texture_mask: Optional[np.ndarray] = None  # [H, W] bool: baked texels (the rest is background)


@threestudio.register("mesh-exporter")
class MeshExporter(Exporter):
    @dataclass
    class Config(Exporter.Config):
        fmt: str = "obj-mtl"
        save_name: str = "model"
        save_normal: bool = False
        save_uv: bool = True
        save_texture: bool = True
        texture_size: int = 1024
        texture_format: str = "jpg"
        xatlas_chart_options: dict = field(default_factory=dict)
        xatlas_pack_options: dict = field(default_factory=dict)
        context_type: str = "gl"  # nvdiffrast's context in threestudio; the CPU baker needs none
        # port keys
        resolution: Optional[int] = None  # None: geometry.isosurface_resolution
        threshold: Optional[Any] = None  # a number or 'auto'; None: geometry.isosurface_threshold
        # evaluate the fine grid near the surface only (the same mesh); None: the geometry's
        # isosurface_coarse_to_fine (threestudio's key for its coarse-to-fine pass, default true)
        surface_only: Optional[bool] = None
        target_faces: Optional[int] = None  # quadric decimation to about this many faces
        largest_component: bool = False
        chunk: Optional[int] = None  # points per field query; None: geometry.isosurface_chunk or 2^18

    cfg: Config

    def configure(self, geometry, material, background=None) -> None:
        super().configure(geometry, material, background)
        validate_config(self.cfg)
        if self.cfg.save_texture and self.cfg.fmt in ("obj", "ply"):
            logger.info("fmt %s stores vertex colours, no texture (obj-mtl and glb hold one)", self.cfg.fmt)

    # ------------------------------------------------------------------ options
    @property
    def extension(self) -> str:
        return mesh_io.FMT_EXTENSIONS[self.cfg.fmt]

    @property
    def textured(self) -> bool:
        return self.cfg.save_texture and self.cfg.save_uv and self.cfg.fmt in ("obj-mtl", "glb")

    @property
    def unwrapped(self) -> bool:
        return self.cfg.save_uv and self.cfg.fmt in ("obj-mtl", "obj") or self.textured

    def files(self, path: str) -> List[str]:
        return mesh_io.file_set(path, self.cfg.fmt, self.textured, self.cfg.texture_format)

    def _resolution(self) -> int:
        return int(self.cfg.resolution or self.geometry.cfg.isosurface_resolution)

    def _chunk(self) -> int:
        return int(self.cfg.chunk or getattr(self.geometry.cfg, "isosurface_chunk", 0) or iso.DEFAULT_CHUNK)

    # ------------------------------------------------------------------ the one colour query
    def albedo(self, points: np.ndarray, progress: bool = False) -> Optional[np.ndarray]:
        """Albedo [N, 3] in [0, 1] at world points [N, 3]: ``geometry.export(points)`` ->
        ``material.export(points=..., **geometry outputs)["albedo"]`` (threestudio's query), in
        chunks; None when the geometry has no features or the material no albedo. Texture and
        vertex colours both come from here (a view-dependent material answers with its albedo)."""
        chunk = self._chunk()
        parts = []
        starts = range(0, len(points), chunk)
        for s in tqdm(starts, desc="albedo", unit="chunk", leave=False, disable=not progress):
            p = Tensor(np.ascontiguousarray(points[s:s + chunk], np.float32))
            geo_out = self.geometry.export(p)
            if "features" not in geo_out:
                return None
            albedo = self.material.export(points=p, **geo_out).get("albedo")
            if albedo is None:
                return None
            parts.append(albedo.asnumpy()[:, :3])
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 3), np.float32)

    # ------------------------------------------------------------------ pipeline
    def extract(self, progress: bool = False):
        """(mesh in world coordinates, threshold, auto, evaluated points, seconds): steps 1-3."""
        geometry = self.geometry
        geometry.set_train(False)
        self.material.set_train(False)
        bbox = geometry.bbox.asnumpy().astype(np.float32)
        requested = geometry.cfg.isosurface_threshold if self.cfg.threshold is None else self.cfg.threshold
        auto = str(requested).strip().lower() == "auto"
        density = lambda p: geometry.forward_field(p)[0]  # noqa: E731
        seconds = {}
        t = time.time()
        r = self._resolution()
        surface_only = self.cfg.surface_only
        if surface_only is None:
            surface_only = getattr(geometry.cfg, "isosurface_coarse_to_fine", True)
        if surface_only:
            field_, level, evaluated = iso.evaluate_surface_grid(density, bbox, r, requested, self._chunk(),
                                                                  progress=progress)
        else:
            field_ = iso.evaluate_grid(density, bbox, r, self._chunk(), progress)
            level, evaluated = iso.resolve_threshold(field_, requested), r ** 3
        seconds["density"] = time.time() - t
        t = time.time()
        mesh = iso.marching_cubes(field_, level, bbox)
        del field_
        seconds["marching_cubes"] = time.time() - t
        gcfg = geometry.cfg
        min_faces = gcfg.isosurface_outlier_n_faces_threshold if gcfg.isosurface_remove_outliers else 0
        if self.cfg.largest_component or min_faces:
            t = time.time()
            mesh = drop_small_components(mesh, self.cfg.largest_component, min_faces)
            seconds["cleanup"] = time.time() - t
        return mesh, level, auto, evaluated, seconds

    def __call__(self, progress: bool = False) -> ExportedMesh:
        """The asset in memory (nothing is written): steps 1-6, y-up."""
        mesh, level, auto, evaluated, seconds = self.extract(progress)
        extracted = len(mesh.faces)
        if self.cfg.target_faces is not None:
            t = time.time()
            mesh = decimate(mesh, self.cfg.target_faces)
            seconds["decimate"] = time.time() - t
        t = time.time()
        mesh.colors = self.albedo(mesh.vertices, progress)
        seconds["vertex_colors"] = time.time() - t
        if mesh.colors is None:
            logger.warning("the geometry has no features: the mesh has no colours")
        if self.unwrapped:
            if len(mesh.faces) > 300_000:
                logger.info("UV-unwrapping %d faces takes long; target_faces (e.g. 100000) is much faster",
                            len(mesh.faces))
            t = time.time()
            mesh.uv, mesh.uv_faces, _ = uv_atlas.unwrap_uv(mesh.vertices, mesh.faces, self.cfg.texture_size,
                                                           self.cfg.xatlas_chart_options, self.cfg.xatlas_pack_options)
            seconds["unwrap"] = time.time() - t
        mask = None
        if self.textured and mesh.colors is not None:
            t = time.time()
            mesh.texture, mask = uv_atlas.bake_texture(mesh.vertices, mesh.faces, mesh.uv, mesh.uv_faces,
                                                    self.cfg.texture_size, lambda p: self.albedo(p, progress))
            seconds["bake"] = time.time() - t
        return ExportedMesh(to_y_up(mesh), level, auto, extracted, evaluated, seconds, mask)

    def write(self, asset: ExportedMesh, path: str, overwrite: bool = False) -> List[str]:
        """Encode and write the file set of ``path`` atomically; returns the paths written."""
        # (a geometry without features gives no colours, so no texture file either)
        paths = mesh_io.file_set(path, self.cfg.fmt, asset.mesh.texture is not None, self.cfg.texture_format)
        files = mesh_io.encode_files(asset.mesh, paths, self.cfg.fmt, self.cfg.save_normal, self.cfg.texture_format)
        return mesh_io.write_files(files, overwrite)

    def summary(self, asset: ExportedMesh, paths: List[str]) -> str:
        m = asset.mesh
        extra = f", {asset.extracted_faces} before decimation" if asset.extracted_faces != len(m.faces) else ""
        what = (f"{self.cfg.texture_size}^2 texture" if m.texture is not None else
                "vertex colours" if m.colors is not None else "no colours")
        return (f"mesh: {len(m.vertices)} vertices, {len(m.faces)} faces{extra}, threshold {asset.threshold:.6g}, "
                f"{what}, {sum(asset.seconds.values()):.1f} s -> {', '.join(paths)} (y-up)")


def validate_config(cfg: "MeshExporter.Config"):
    """One-line errors for values that cannot work, raised before any field is evaluated."""
    if cfg.fmt not in mesh_io.FMT_EXTENSIONS:
        raise MeshExportError(f"system.exporter.fmt '{cfg.fmt}' is not supported: use obj-mtl, obj, glb or ply")
    size = cfg.texture_size
    if not (isinstance(size, int) and 0 < size <= MAX_TEXTURE_SIZE and size & (size - 1) == 0):
        raise MeshExportError(f"texture_size must be a power of two up to {MAX_TEXTURE_SIZE} "
                              f"(e.g. 1024 or 2048), got {size}")
    if cfg.texture_format not in mesh_io.TEXTURE_FORMATS:
        raise MeshExportError(f"texture_format '{cfg.texture_format}' is not supported: use png or jpg")
    if cfg.target_faces is not None and cfg.target_faces < 1:
        raise MeshExportError(f"target_faces must be at least 1 (or unset: no decimation), got {cfg.target_faces}")
    if cfg.resolution is not None and cfg.resolution < 2:
        raise MeshExportError(f"resolution must be at least 2, got {cfg.resolution}")
    if cfg.save_texture and not cfg.save_uv and cfg.fmt in ("obj-mtl", "glb"):
        raise MeshExportError("save_texture needs save_uv=true (a texture is addressed by UVs)")

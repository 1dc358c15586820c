"""Textured export: surface-only extraction equals dense, texture fidelity on a known albedo,
files that reload with UVs and texture, and bad options refused before any work.

The known field is test_mesh_export's sphere (implicit-volume with hand-set parameters); the
albedo of the fidelity test is a 16 x 16 checkerboard in spherical coordinates, answered by a
material that reads the query points (the exporter's one colour query passes them).
"""
import os

import numpy as np
import pytest
import trimesh
from mindspore import Tensor

import extract_color_mesh
import launch
from test_mesh_export import THRESHOLD, exporter, known_fields, trial  # noqa: F401 - fixture
from threestudio.utils import isosurface as iso
from threestudio.utils import mesh_export as mx
from threestudio.utils import uv_atlas

A, B = np.array([0.9, 0.8, 0.1]), np.array([0.1, 0.2, 0.7])


def checker(points: np.ndarray) -> np.ndarray:
    """16 x 16 checkerboard over (azimuth, polar angle) of world points."""
    p = points.astype(np.float64)
    theta = np.arctan2(p[:, 1], p[:, 0])
    phi = np.arccos(np.clip(p[:, 2] / np.linalg.norm(p, axis=1), -1.0, 1.0))
    cell = np.floor(8.0 * (theta / np.pi + 1.0)) + np.floor(16.0 * phi / np.pi)
    return np.where((cell.astype(np.int64) % 2 == 0)[:, None], A, B)


class CheckerMaterial:
    """A material whose albedo is ``checker`` at the query points."""

    def set_train(self, mode):
        pass

    def export(self, points, **kwargs):
        return {"albedo": Tensor(checker(points.asnumpy()).astype(np.float32))}


def surface_samples(mesh: mx.ColorMesh, n: int, seed: int = 0):
    """(face [n], barycentrics [n, 3]) of area-uniform random points on the mesh."""
    rng = np.random.default_rng(seed)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(area), n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return face, np.stack([1 - s, s * (1 - r2), s * r2], -1)


def interpolate(values, index, face, bary):
    return np.einsum("nc,ncd->nd", bary, values[index[face]].astype(np.float64))


# ------------------------------------------------------------------ surface-only == dense
def blobs(p: np.ndarray) -> np.ndarray:
    """A field with several components, a torus, a saddle-like ripple and flat-ish regions."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    s1 = 1.0 - np.sqrt((x + 0.35) ** 2 + y ** 2 + z ** 2) / 0.4
    s2 = 1.0 - np.sqrt((x - 0.5) ** 2 + (y - 0.4) ** 2 + (z + 0.3) ** 2) / 0.15
    torus = 1.0 - np.sqrt((np.sqrt(x ** 2 + (z - 0.4) ** 2) - 0.45) ** 2 + (y + 0.1) ** 2) / 0.08
    ripple = 0.6 - np.abs(y - 0.55 - 0.05 * np.sin(9 * x) * np.cos(7 * z)) / 0.05 - 0.3 * (x ** 2 + z ** 2)
    return np.maximum.reduce([s1, s2, torus, ripple]).astype(np.float32)


def test_surface_only_equals_dense_at_256():
    bbox = np.array([[-1] * 3, [1] * 3], np.float32)
    fn = lambda t: Tensor(blobs(t.asnumpy())[:, None])  # noqa: E731
    dense = iso.evaluate_grid(fn, bbox, 256)
    surface, level, evaluated = iso.evaluate_surface_grid(fn, bbox, 256, 0.0)
    assert level == 0.0 and evaluated < 0.25 * 256 ** 3  # most of the grid was never evaluated
    a, b = iso.marching_cubes(dense, 0.0, bbox), iso.marching_cubes(surface, 0.0, bbox)
    assert len(a.faces) > 100_000
    assert np.array_equal(a.faces, b.faces)
    np.testing.assert_allclose(b.vertices, a.vertices, rtol=0, atol=1e-5)


def test_surface_only_equals_dense_through_the_exporter():
    geometry, material = known_fields()
    meshes = [exporter(geometry, material, resolution=64, surface_only=s).extract() for s in (True, False)]
    (a, la, _, na, _), (b, lb, _, nb, _) = meshes
    assert la == lb == THRESHOLD and na < nb == 64 ** 3
    assert np.array_equal(a.faces, b.faces)
    np.testing.assert_allclose(a.vertices, b.vertices, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ texture fidelity
def test_texture_fidelity_checkerboard(tmp_path):
    """Sphere decimated to 5,000 faces: the baked texture read through UV (bilinear) matches
    the analytic checkerboard; vertex colours on the same mesh cannot."""
    geometry, _ = known_fields()
    exp = exporter(geometry, CheckerMaterial(), fmt="obj-mtl", save_uv=True, save_texture=True, texture_size=1024,
                   texture_format="png", resolution=128, target_faces=5000)
    asset = exp()
    mesh = asset.mesh
    assert abs(len(mesh.faces) - 5000) <= 50 and asset.extracted_faces > 50_000
    paths = exp.write(asset, str(tmp_path / "ball.obj"))
    png = np.asarray(trimesh.load(paths[0], process=False, force="mesh").visual.material.image.convert("RGB"))
    texture = png.astype(np.float64) / 255.0
    face, bary = surface_samples(mesh, 100_000)
    world = mx.from_y_up(interpolate(mesh.vertices, mesh.faces, face, bary))
    truth = checker(world)
    uv = interpolate(mesh.uv, mesh.uv_faces, face, bary)
    baked, all_baked = uv_atlas.sample_bilinear(texture, uv, asset.texture_mask)
    textured_mae = np.abs(baked - truth).mean()
    vertex_mae = np.abs(interpolate(mesh.colors, mesh.faces, face, bary) - truth).mean()
    print(f"checkerboard MAE: texture {textured_mae:.4f}, vertex colours {vertex_mae:.4f}")
    assert all_baked.all()  # no bilinear tap reads background
    assert textured_mae <= 0.03
    assert vertex_mae > 4 * textured_mae


def test_rasterizer_covers_every_bilinear_footprint():
    """Texel centres of the UV triangles get their own triangle's barycentrics; a ring of
    texels around each chart holds the closest surface point (sliver triangles included)."""
    rng = np.random.default_rng(1)
    uv = np.array([[0.1, 0.1], [0.6, 0.15], [0.3, 0.7], [0.62, 0.2], [0.9, 0.21], [0.62, 0.9]], np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    faces3d = np.array([[0, 1, 2], [3, 4, 5]])
    vertices = rng.normal(size=(6, 3)).astype(np.float32)
    face_of, bary = uv_atlas.rasterize_uv(uv, faces, 64)
    assert set(np.unique(face_of)) == {-1, 0, 1}
    # barycentrics reproduce the texel centre (inside) or lie on the triangle (ring)
    rows, cols = np.nonzero(face_of >= 0)
    f, w = face_of[rows, cols], bary[rows, cols].astype(np.float64)
    assert (w >= -1e-6).all() and np.allclose(w.sum(1), 1.0)
    centre = np.stack([(cols + 0.5) / 64, 1 - (rows + 0.5) / 64], -1)
    at = np.einsum("nc,ncd->nd", w, uv[faces[f]].astype(np.float64))
    assert np.abs(at - centre).max() * 64 <= uv_atlas.DEFAULT_RING + 1e-6
    # any point of either triangle: its four bilinear texels are all baked
    n = 20000
    fs = rng.integers(0, 2, n)
    r1, r2 = rng.random(n), rng.random(n)
    b = np.stack([1 - np.sqrt(r1), np.sqrt(r1) * (1 - r2), np.sqrt(r1) * r2], -1)
    points_uv = np.einsum("nc,ncd->nd", b, uv[faces[fs]])
    texture, mask = uv_atlas.bake_texture(vertices, faces3d, uv, faces, 64, lambda p: (p - p.min()) / 10)
    _, ok = uv_atlas.sample_bilinear(texture, points_uv, mask)
    assert ok.all()


# ------------------------------------------------------------------ files
@pytest.mark.parametrize("ext", [".obj", ".glb"])
def test_textured_files_reload_with_uv_and_texture(trial, tmp_path, capsys, ext):  # noqa: F811
    out = tmp_path / f"ball{ext}"
    code = extract_color_mesh.main([str(trial), "--resolution", "48", "--texture", "--texture_size", "256",
                                    "--target_faces", "2000", "--output", str(out), "--no_progress"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "256^2 texture" in stdout and "before decimation" in stdout
    expected = ["ball.obj", "ball.mtl", "ball_texture_kd.png"] if ext == ".obj" else ["ball.glb"]
    assert sorted(os.listdir(tmp_path)) == sorted(expected + ["outputs"])  # no temporaries
    loaded = trimesh.load(out, process=False, force="mesh")
    assert loaded.visual.kind == "texture" and loaded.visual.uv.shape == (len(loaded.vertices), 2)
    material = loaded.visual.material
    image = material.image if hasattr(material, "image") else material.baseColorTexture
    assert image.size == (256, 256)
    assert 1800 <= len(loaded.faces) <= 2000
    # y-up and the known colours: albedo sigmoid(4u - 2) per channel, blue grows with world z = file y
    colours = np.asarray(loaded.visual.to_color().vertex_colors, np.float64)[:, :3] / 255.0
    world = mx.from_y_up(np.asarray(loaded.vertices, np.float64))
    on_sphere = world / np.linalg.norm(world, axis=1, keepdims=True) * np.linalg.norm(world, axis=1).mean()
    truth = 1.0 / (1.0 + np.exp(-(4.0 * (on_sphere + 1.0) / 2.0 - 2.0)))
    assert np.abs(colours - truth).mean() < 0.03
    assert trimesh.Trimesh(loaded.vertices, loaded.faces, process=False).volume > 0  # outward
    if ext == ".obj":  # vertex colours stay in the obj next to the texture
        first_v = next(l for l in out.read_text().splitlines() if l.startswith("v "))
        assert len(first_v.split()) == 7


def test_launch_export_textured_default(trial, capsys):  # noqa: F811
    """threestudio's defaults: fmt obj-mtl, save_uv and save_texture, jpg texture."""
    parsed, ckpt = trial / "configs" / "parsed.yaml", trial / "ckpts" / "last.ckpt"
    code = launch.main(["--config", str(parsed), "--export", f"resume={ckpt}", "system.geometry.isosurface_resolution=32",
                        "system.exporter.texture_size=128", "system.exporter.target_faces=500"])
    assert code == 0, capsys.readouterr().err
    out = trial / "save" / "it7-export"
    assert sorted(os.listdir(out)) == ["model.mtl", "model.obj", "model_texture_kd.jpg"]
    assert "map_Kd model_texture_kd.jpg" in (out / "model.mtl").read_text()
    loaded = trimesh.load(out / "model.obj", process=False, force="mesh")
    assert loaded.visual.kind == "texture" and loaded.visual.material.image.size == (128, 128)


# ------------------------------------------------------------------ bad input
def test_bad_options_one_line_nothing_left(trial, tmp_path, capsys):  # noqa: F811
    ckpt = str(trial / "ckpts" / "last.ckpt")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (["--texture", "--texture_size", "1000"], "texture_size must be a power of two up to 8192"),
        (["--texture", "--texture_size", "16384"], "texture_size must be a power of two up to 8192"),
        (["--texture", "--texture_size", "0"], "texture_size must be a power of two"),
        (["--target_faces", "0"], "target_faces must be at least 1"),
        (["--target_faces", "100000000"], "target_faces must be in 1.."),
        (["--texture", "--output", str(locked / "m.obj")], "is not a writable directory"),
        (["--output", "m.fbx"], "unknown mesh format '.fbx'"),
    ]
    try:
        for argv, expected in cases:
            if os.access(locked, os.W_OK) and "locked" in " ".join(argv):
                continue  # running as root: permissions do not apply (checked below with a file)
            code = extract_color_mesh.main([ckpt, "--resolution", "24", "--no_progress", *argv])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (argv, err)
    finally:
        locked.chmod(0o700)
    (tmp_path / "afile").write_text("x")
    code = extract_color_mesh.main([ckpt, "--resolution", "24", "--no_progress", "--texture",
                                    "--output", str(tmp_path / "afile" / "m.obj")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "is not a writable directory" in err[0]
    # launch.py --export: an unknown fmt and a bad texture_size, before any trial output
    parsed = trial / "configs" / "parsed.yaml"
    for override, expected in (("system.exporter.fmt=fbx", "system.exporter.fmt 'fbx' is not supported"),
                               ("system.exporter.texture_size=100", "texture_size must be a power of two"),
                               ("system.exporter.target_faces=100000000", "target_faces must be in 1..")):
        assert launch.main(["--config", str(parsed), "--export", f"resume={ckpt}", override,
                            "system.geometry.isosurface_resolution=24"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and expected in err[-1], err
    assert not (trial / "save").exists()
    assert sorted(os.listdir(tmp_path)) == ["afile", "locked", "outputs"]
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.obj")) and not list(tmp_path.rglob("*.png"))


def test_file_set_is_written_all_or_nothing(tmp_path, monkeypatch):
    """A failure while renaming the second file of obj + mtl + png takes back the first, the
    temporaries and the directories the write created."""
    from threestudio.utils import mesh_io

    paths = mesh_io.file_set(str(tmp_path / "new" / "dir" / "m.obj"), "obj-mtl", True, "png")
    files = {p: b"x" for p in paths}
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(mesh_io.os, "replace", failing_replace)
    with pytest.raises(mx.MeshExportError, match="No space left on device"):
        mesh_io.write_files(files)
    assert len(calls) == 2 and os.listdir(tmp_path) == []
    monkeypatch.setattr(mesh_io.os, "replace", real_replace)
    assert mesh_io.write_files(files) == paths and sorted(os.listdir(tmp_path / "new" / "dir")) == \
        ["m.mtl", "m.obj", "m_texture_kd.png"]

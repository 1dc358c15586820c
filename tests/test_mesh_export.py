"""Mesh export on a field whose surface and colours are known exactly.

The implicit-volume geometry gets its parameters set by hand: the density network is zero, so
density = softplus(10 (1 - |x| / std)) (the magic3d blob) and the surface density == 3 is the
sphere of radius R0 = std (1 - softplus^-1(3) / 10). The hash grid has one dense level whose
table holds the corner coordinates (and a constant 1), so trilinear interpolation returns the
contracted point u = (x + 1) / 2 exactly; the feature MLP maps it to 4 u - 2 and the material's
sigmoid gives the albedo sigmoid(4 u - 2) per channel (x -> red, y -> green, z -> blue).
"""
import os
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml
from mindspore import Tensor

import extract_color_mesh
import threestudio
from threestudio.utils import mesh_export as mx
from threestudio.utils.checkpoint import fingerprint, save_checkpoint
from threestudio.utils.config import parse_structured
from launch_helpers import launch_main

STD, SCALE, THRESHOLD = 1.0, 10.0, 3.0
R0 = STD * (1.0 - np.log(np.expm1(THRESHOLD)) / SCALE)  # 0.70497
BASE_RES = 8
GEOMETRY = {
    "radius": 1.0, "normal_type": None, "density_bias": "blob_magic3d", "density_activation": "softplus",
    "density_blob_scale": SCALE, "density_blob_std": STD, "isosurface_threshold": THRESHOLD,
    "pos_encoding_config": {"otype": "HashGrid", "n_levels": 1, "n_features_per_level": 4,
                            "log2_hashmap_size": 15, "base_resolution": BASE_RES, "per_level_scale": 2.0},
    "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                           "n_neurons": 8, "n_hidden_layers": 1},
}
MATERIAL = {"n_output_dims": 3, "color_activation": "sigmoid"}


def true_color(points_world: np.ndarray) -> np.ndarray:
    u = (points_world + 1.0) / 2.0
    return 1.0 / (1.0 + np.exp(-(4.0 * u - 2.0)))


def known_fields():
    geometry = threestudio.find("implicit-volume")(GEOMETRY)
    material = threestudio.find("no-material")(MATERIAL)
    params = dict(geometry.parameters_and_names())
    # dense level: entry i + 8 j + 64 k is the corner whose position is pos = x * 7 + 0.5
    n = BASE_RES
    i, j, k = np.unravel_index(np.arange(n ** 3), (n, n, n), order="F")
    table = np.stack([(i - 0.5) / (n - 1), (j - 0.5) / (n - 1), (k - 0.5) / (n - 1), np.ones(n ** 3)], -1)
    w1 = np.zeros((8, 4)); w1[:4, :4] = np.eye(4)
    w2 = np.zeros((3, 8)); w2[:, :3] = 4.0 * np.eye(3); w2[:, 3] = -2.0
    values = {"encoding.encoding.params": table.reshape(-1), "density_network.layers.0.weight": np.zeros((8, 4)),
              "density_network.layers.2.weight": np.zeros((1, 8)), "feature_network.layers.0.weight": w1,
              "feature_network.layers.2.weight": w2}
    for name, value in values.items():
        params[name].set_data(Tensor(value.astype(np.float32)))
    return geometry, material


def check_sphere(vertices_world, colors, resolution, radius=R0):
    voxel = 2.0 / (resolution - 1)
    dist = np.linalg.norm(vertices_world, axis=1)
    assert np.abs(dist - radius).max() < 1.5 * voxel
    on_surface = vertices_world * (radius / dist)[:, None]
    assert colors is not None and np.abs(colors[:, :3] - true_color(on_surface)).mean() < 0.05


def test_field_is_the_known_one():
    geometry, material = known_fields()
    # |x| <= 0.8: all interpolation corners inside the 8^3 table (the top corner wraps, as in tcnn)
    pts = np.random.default_rng(0).uniform(-0.8, 0.8, (500, 3)).astype(np.float32)
    density = geometry.forward_density(Tensor(pts)).asnumpy()[:, 0]
    np.testing.assert_allclose(density, np.log1p(np.exp(SCALE * (1 - np.linalg.norm(pts, axis=1) / STD))),
                               rtol=1e-4, atol=1e-4)
    albedo = material.export(features=geometry.export(Tensor(pts))["features"])["albedo"].asnumpy()
    np.testing.assert_allclose(albedo, true_color(pts), atol=1e-5)


def test_extract_sphere_close_watertight_colored():
    geometry, material = known_fields()
    res = 48
    mesh, threshold = mx.extract_color_mesh(geometry, material, resolution=res, chunk=5000)
    assert threshold == THRESHOLD and len(mesh.faces) > 1000
    check_sphere(mesh.vertices, mesh.colors, res)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume == pytest.approx(4 / 3 * np.pi * R0 ** 3, rel=0.02)  # > 0: faces wind outwards
    # normals point outwards
    normals = mesh.vertex_normals
    assert (np.sum(normals * mesh.vertices, 1) / np.linalg.norm(mesh.vertices, axis=1)).min() > 0.9


def test_auto_threshold_and_empty_field():
    geometry, material = known_fields()
    field = mx.evaluate_grid(lambda p: geometry.forward_field(p)[0], np.array([[-1] * 3, [1] * 3], np.float32), 24)
    auto = mx.resolve_threshold(field, "auto")
    assert auto == pytest.approx(float(field[field > 1e-5].mean()), rel=1e-6)
    mesh, used = mx.extract_color_mesh(geometry, material, resolution=40, threshold="auto")
    field40 = mx.evaluate_grid(lambda p: geometry.forward_field(p)[0], np.array([[-1] * 3, [1] * 3], np.float32), 40)
    assert used == pytest.approx(float(field40[field40 > 1e-5].mean()), rel=1e-6) and 0 < used < field40.max()
    radius = STD * (1.0 - np.log(np.expm1(used)) / SCALE)
    check_sphere(mesh.vertices, mesh.colors, 40, radius)
    with pytest.raises(mx.MeshExportError, match=r"empty surface at threshold 1e\+06.*use a lower threshold or 'auto'"):
        mx.extract_color_mesh(geometry, material, resolution=16, threshold=1e6)


def test_largest_component_and_outliers():
    r = 40
    ax = np.linspace(-1, 1, r, dtype=np.float32)
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    big = 1.0 - np.sqrt((x + 0.4) ** 2 + y ** 2 + z ** 2) / 0.45
    small = 1.0 - np.sqrt((x - 0.6) ** 2 + y ** 2 + z ** 2) / 0.2
    bbox = np.array([[-1] * 3, [1] * 3], np.float32)
    both = mx.marching_cubes(np.maximum(big, small), 0.0, bbox)
    alone = mx.marching_cubes(big, 0.0, bbox)
    largest = mx.drop_small_components(both, keep_largest=True)
    assert len(largest.faces) == len(alone.faces) < len(both.faces)
    np.testing.assert_allclose(np.sort(largest.vertices, 0), np.sort(alone.vertices, 0))
    assert trimesh.Trimesh(largest.vertices, largest.faces, process=False).is_watertight
    # threestudio's outlier rule: components below a fraction of all faces go
    assert len(mx.drop_small_components(both, min_faces=0.3).faces) == len(alone.faces)
    assert len(mx.drop_small_components(both, min_faces=0.01).faces) == len(both.faces)


@pytest.mark.parametrize("ext", [".obj", ".ply", ".glb"])
def test_files_reload_with_colors_y_up(tmp_path, ext):
    geometry, material = known_fields()
    mesh, _ = mx.extract_color_mesh(geometry, material, resolution=32)
    path = str(tmp_path / "sub" / f"m{ext}")
    mx.write_mesh(mx.to_y_up(mesh), path)
    assert sorted(os.listdir(tmp_path / "sub")) == [f"m{ext}"]  # no temporary left
    loaded = trimesh.load(path, process=False, force="mesh")
    assert loaded.visual.kind == "vertex" and len(loaded.vertices) == len(mesh.vertices)
    world = mx.from_y_up(np.asarray(loaded.vertices, np.float32))
    check_sphere(world, loaded.visual.vertex_colors[:, :3] / 255.0, 32)
    # y-up: the file's +y is the world's up (+z): blue (z) grows with the file's y
    top, bottom = np.argmax(loaded.vertices[:, 1]), np.argmin(loaded.vertices[:, 1])
    assert loaded.visual.vertex_colors[top, 2] > loaded.visual.vertex_colors[bottom, 2] + 100
    assert trimesh.Trimesh(loaded.vertices, loaded.faces, process=False).volume > 0  # still outward
    with pytest.raises(mx.MeshExportError, match="exists: choose another --output or pass --overwrite"):
        mx.write_mesh(mx.to_y_up(mesh), path)


# ---------------------------------------------------------------- command lines on a checkpoint
def _system_cfg(geometry=GEOMETRY):
    return {"geometry_type": "implicit-volume", "geometry": geometry, "material_type": "no-material",
            "material": MATERIAL, "background_type": "solid-color-background", "background": {},
            "renderer_type": "nerf-volume-renderer", "renderer": {"num_samples_per_ray": 16},
            "guidance_type": "multiview-diffusion-guidance", "guidance": {},
            "prompt_processor_type": "stable-diffusion-prompt-processor",
            "prompt_processor": {"prompt": "a ball"}, "optimizer": {"name": "AdamW"}}


def _experiment(system):
    return {"name": "mesh", "tag": "ball", "timestamp": "@20240101-000000", "exp_root_dir": "outputs",
            "data_type": "random-multiview-camera-datamodule", "data": {}, "system_type": "mvdream-system",
            "system": system}


@pytest.fixture
def trial(tmp_path, monkeypatch):
    """outputs/mesh/ball@.../{configs/parsed.yaml, ckpts/last.ckpt} holding the known field at step 7."""
    monkeypatch.chdir(tmp_path)
    trial_dir = tmp_path / "outputs" / "mesh" / "ball@20240101-000000"
    (trial_dir / "configs").mkdir(parents=True)
    (trial_dir / "configs" / "parsed.yaml").write_text(yaml.safe_dump(_experiment(_system_cfg())))
    geometry, material = known_fields()
    arrays = {f"state.geometry.{n}": p.asnumpy() for n, p in geometry.parameters_and_names()}
    system_cls = threestudio.find("mvdream-system")
    sections = system_cls.config_fingerprint_sections(parse_structured(system_cls.Config, _system_cfg()))
    save_checkpoint(str(trial_dir / "ckpts" / "last.ckpt"), arrays,
                    {"global_step": 7, "epoch": 0, "fingerprint": fingerprint(sections)})
    return trial_dir


def _cli(capsys, argv):
    code = extract_color_mesh.main(argv)
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def test_cli_default_output_formats_and_no_overwrite(trial, capsys):
    ckpt = str(trial / "ckpts" / "last.ckpt")
    code, out, err = _cli(capsys, [ckpt, "--resolution", "40", "--no_progress"])
    assert code == 0, err
    default = trial / "save" / "it7-export" / "model.obj"
    assert f"-> {default}" in out and "vertices" in out and "faces" in out
    loaded = trimesh.load(default, process=False, force="mesh")
    check_sphere(mx.from_y_up(np.asarray(loaded.vertices, np.float32)), loaded.visual.vertex_colors / 255.0, 40)
    before = default.read_bytes()
    code, out, err = _cli(capsys, [str(trial), "--resolution", "40", "--no_progress"])  # a trial dir works too
    assert code == 1 and err[-1].startswith("error: ") and "exists" in err[-1] and default.read_bytes() == before
    code, out, err = _cli(capsys, [ckpt, "--resolution", "36", "--threshold", "auto", "--largest_component",
                                   "--output", "ball.glb", "--no_progress"])
    assert code == 0 and "auto threshold:" in out
    assert trimesh.load("ball.glb", process=False, force="mesh").visual.kind == "vertex"


def test_cli_errors_one_line_nothing_left(trial, tmp_path, capsys):
    ckpt = str(trial / "ckpts" / "last.ckpt")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(_experiment(_system_cfg({**GEOMETRY, "density_blob_std": 0.9}))))
    (tmp_path / "afile").write_text("x")
    cases = [
        (["missing/last.ckpt"], "checkpoint not found: missing/last.ckpt"),
        ([ckpt, "--config", str(other)], "was written for a different model: its system.geometry config differs"),
        ([ckpt, "--threshold", "1e6"], "empty surface at threshold 1e+06"),
        ([ckpt, "--threshold", "-1"], "use a higher threshold or 'auto'"),
        ([ckpt, "--output", str(tmp_path / "afile" / "m.obj")], "is not a writable directory"),
        ([ckpt, "--output", "m.stl"], "unknown mesh format '.stl'"),
    ]
    for argv, expected in cases:
        code, out, err = _cli(capsys, [*argv, "--resolution", "16", "--no_progress"])
        assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (argv, err)
    assert not (trial / "save").exists() and not list(tmp_path.glob("*.obj")) and not list(tmp_path.glob(".*tmp"))


def test_launch_export(trial, tmp_path, capsys):
    parsed = trial / "configs" / "parsed.yaml"
    ckpt = trial / "ckpts" / "last.ckpt"
    assert launch_main(["--config", str(parsed), "--export", f"resume={ckpt}",
                        "system.geometry.density_blob_std=0.8"]) == 1  # another geometry
    assert "different model: its system.geometry config differs" in capsys.readouterr().err
    assert not (trial / "save").exists()
    # isosurface_* only steer the export: not part of the checkpoint's identity
    code = launch_main(["--config", str(parsed), "--export", f"resume={ckpt}", "system.exporter.fmt=ply",
                        "system.exporter.save_name=ball", "system.geometry.isosurface_resolution=40"])
    assert code == 0, capsys.readouterr().err
    out = trial / "save" / "it7-export" / "ball.ply"  # parsed.yaml's timestamp: the same trial dir
    loaded = trimesh.load(out, process=False, force="mesh")
    check_sphere(mx.from_y_up(np.asarray(loaded.vertices, np.float32)), loaded.visual.vertex_colors / 255.0, 40)

"""implicit-volume ``dir_encoding_config`` and ``neural-radiance-material``: view directions reach
the colour, and a mesh export takes the colour seen head-on (view direction = minus the
surface normal), checked on a known field."""
import numpy as np
import pytest
from mindspore import Tensor

import threestudio
from threestudio.utils.config import load_config

SH4 = {"otype": "SphericalHarmonics", "degree": 4}
SH_Z = 0.48860251190291987  # tcnn SH output 2: SH_Z * z of the unit view direction
GAIN = 4.0
GRID = {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 10,
        "base_resolution": 8, "per_level_scale": 2.0}


def sphere_points(n=200, radius=0.5, seed=0):
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return (radius * d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)


def select_sh_z(mlp, sh_offset, gain=GAIN):
    """Set a 1-hidden-layer bias-free ReLU MLP to output[0] = gain * input[sh_offset + 2] (the SH
    z term), other outputs 0: relu(s) - relu(-s) = s."""
    w0 = np.zeros(mlp.layers[0].weight.shape, np.float32)
    w0[0, sh_offset + 2], w0[1, sh_offset + 2] = gain, -gain
    w1 = np.zeros(mlp.layers[2].weight.shape, np.float32)
    w1[0, 0], w1[0, 1] = 1.0, -1.0
    mlp.layers[0].weight.set_data(Tensor(w0))
    mlp.layers[2].weight.set_data(Tensor(w1))


def radial_geometry(**cfg):
    """implicit-volume whose density is the blob prior alone (grid and density MLP zeroed):
    radial, so its outward normal at x is x / |x|."""
    geo = threestudio.find("implicit-volume")({"pos_encoding_config": GRID, "normal_type": None, **cfg})
    geo.encoding.encoding.params.set_data(Tensor(np.zeros(geo.encoding.encoding.params.shape, np.float32)))
    return geo


def expected_head_on(points):
    """sigmoid(GAIN * SH_Z * v_z) for v = -x / |x| (looking straight at the sphere's surface)."""
    v_z = -points[:, 2] / np.linalg.norm(points, axis=-1)
    return 1.0 / (1.0 + np.exp(-GAIN * SH_Z * v_z))


def test_implicit_volume_dir_encoding_feeds_view_directions_to_the_features():
    geo = radial_geometry(dir_encoding_config=SH4)
    assert geo.feature_network.layers[0].weight.shape == (64, 4 + 16)
    select_sh_z(geo.feature_network, 4)
    points = sphere_points()
    dirs = np.random.default_rng(1).normal(size=points.shape).astype(np.float32) * 3  # any length
    feats = geo(Tensor(points.reshape(10, 20, 3)), viewdirs=Tensor(dirs.reshape(10, 20, 3)))["features"]
    unit = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    np.testing.assert_allclose(feats.asnumpy().reshape(-1, 3)[:, 0], GAIN * SH_Z * unit[:, 2], atol=1e-5)
    with pytest.raises(ValueError, match="needs the view directions"):
        geo(Tensor(points))


def test_implicit_volume_export_is_the_colour_seen_head_on():
    geo = radial_geometry(dir_encoding_config=SH4)
    material = threestudio.find("no-material")({"n_output_dims": 3, "color_activation": "sigmoid"})
    select_sh_z(geo.feature_network, 4)
    points = sphere_points()
    out = geo.export(Tensor(points))  # what the mesh exporter calls
    np.testing.assert_allclose(out["viewdirs"].asnumpy(), -points / np.linalg.norm(points, axis=-1, keepdims=True),
                               atol=1e-3)  # central differences of the radial blob
    albedo = material.export(features=out["features"])["albedo"].asnumpy()
    np.testing.assert_allclose(albedo[:, 0], expected_head_on(points), atol=1e-3)
    np.testing.assert_allclose(albedo[:, 1:], 0.5, atol=1e-6)


def test_neural_radiance_material_export_is_the_colour_seen_head_on():
    geo = radial_geometry(n_feature_dims=8)
    material = threestudio.find("neural-radiance-material")(
        {"input_feature_dims": 8, "dir_encoding_config": SH4,
         "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 1}})
    select_sh_z(material.network, 8)
    points = sphere_points()
    out = geo.export(Tensor(points), viewdirs=geo.head_on_viewdirs(Tensor(points)))
    albedo = material.export(**out)["albedo"].asnumpy()
    np.testing.assert_allclose(albedo[:, 0], expected_head_on(points), atol=1e-3)
    # rendering: the material sees each sample's ray direction
    dirs = np.tile(np.float32([[0, 0, -1]]), (len(points), 1))
    rgb = material(features=out["features"], viewdirs=Tensor(dirs)).asnumpy()
    np.testing.assert_allclose(rgb[:, 0], 1.0 / (1.0 + np.exp(GAIN * SH_Z)), atol=1e-6)
    with pytest.raises(ValueError, match="pass viewdirs"):
        material.export(features=out["features"])


def test_viewdep_config_is_the_original_with_the_option_on():
    root = "MVDream-threestudio/configs/"
    cli = ["system.prompt_processor.prompt=a cat"]
    base = load_config(root + "mvdream-sd21.yaml", cli_args=cli)
    viewdep = load_config(root + "mvdream-sd21-viewdep.yaml", cli_args=cli)
    assert viewdep.system.geometry.dir_encoding_config == SH4
    del viewdep.system.geometry["dir_encoding_config"]
    assert viewdep.name != base.name
    viewdep.name = base.name
    assert viewdep == base


def test_tcnn_mlp_otypes_are_initialised_as_tcnn():
    """FullyFusedMLP / CutlassMLP (neural-radiance-material's default) draw U(+-sqrt(6 / (fan_in +
    fan_out))) over tcnn's widths padded to 16; VanillaMLP keeps torch.nn.Linear's U(+-1/sqrt(in))."""
    from threestudio.models.networks import get_mlp

    net = {"activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 2}
    for otype in ("FullyFusedMLP", "CutlassMLP"):
        weights = [p.asnumpy() for _, p in get_mlp(24, 3, {"otype": otype, **net}).parameters_and_names()]
        assert [w.shape for w in weights] == [(16, 24), (16, 16), (3, 16)]
        for w, bound in zip(weights, (np.sqrt(6 / (32 + 16)), np.sqrt(6 / 32), np.sqrt(6 / 32))):
            assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    weights = [p.asnumpy() for _, p in get_mlp(24, 3, {"otype": "VanillaMLP", **net}).parameters_and_names()]
    for w, bound in zip(weights, (1 / np.sqrt(24), 0.25, 0.25)):
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound

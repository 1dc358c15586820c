"""implicit-volume geometry, materials and backgrounds against closed-form NumPy values."""
import random

import numpy as np
import pytest
from mindspore import Tensor

import threestudio
from threestudio.models.networks import get_encoding
from threestudio.utils.config import ConfigError

SMALL_GRID = dict(otype="HashGrid", n_levels=4, n_features_per_level=2, log2_hashmap_size=8,
                  base_resolution=4, per_level_scale=2.0)


def softplus(x):
    return np.logaddexp(0.0, x)


def make_geometry(**overrides):
    cfg = dict(radius=1.0, pos_encoding_config=SMALL_GRID, **overrides)
    return threestudio.find("implicit-volume")(cfg)


def zero_grid(geometry):
    """Zero hash table -> encoding 0 -> bias-free MLP outputs 0: density = act(blob bias)."""
    params = geometry.encoding.encoding.params
    params.set_data(Tensor(np.zeros(params.shape, np.float32)))


def test_density_bias_and_activation_at_known_points():
    pts = np.array([[0, 0, 0], [0.25, 0, 0], [0.3, -0.4, 0], [0.5, 0.5, 0.5], [-1, 1, -1]], np.float32)
    r = np.linalg.norm(pts, axis=-1, keepdims=True)
    cases = {
        ("blob_magic3d", "softplus"): softplus(10 * (1 - r / 0.5)),
        ("blob_dreamfusion", "exp"): np.exp(10 * np.exp(-0.5 * r ** 2 / 0.5 ** 2)),
        (2.5, "softplus"): softplus(np.full_like(r, 2.5)),
    }
    for (bias, act), expected in cases.items():
        geo = make_geometry(density_bias=bias, density_activation=act)
        zero_grid(geo)
        out = geo(Tensor(pts))
        assert out["density"].shape == (5, 1) and out["features"].shape == (5, 3)
        np.testing.assert_allclose(out["density"].asnumpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(geo.forward_density(Tensor(pts)).asnumpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["features"].asnumpy(), 0.0, atol=0)


def test_default_config_keys_and_state():
    geo = threestudio.find("implicit-volume")({})  # threestudio defaults: 16-level 2^19 grid
    assert geo.cfg.density_bias == "blob_magic3d" and geo.cfg.normal_type == "finite_difference"
    assert geo.encoding.n_output_dims == 32
    np.testing.assert_array_equal(geo.bbox.asnumpy(), [[-1, -1, -1], [1, 1, 1]])
    names = sorted(p.name for p in geo.trainable_params())
    assert names == ["density_network.layers.0.weight", "density_network.layers.2.weight",
                     "encoding.encoding.params", "feature_network.layers.0.weight",
                     "feature_network.layers.2.weight"]
    # bias-free 32 -> 64 -> out layers, kaiming-uniform bound 1/sqrt(fan_in)
    w = geo.density_network.layers[0].weight.asnumpy()
    assert w.shape == (64, 32) and np.abs(w).max() <= 1 / np.sqrt(32) and w.std() > 0.5 / np.sqrt(96)


def test_finite_difference_normal_of_blob_is_radial():
    for normal_type in ("finite_difference", "finite_difference_laplacian", "analytic"):
        geo = make_geometry(normal_type=normal_type, density_bias="blob_dreamfusion")
        zero_grid(geo)
        rng = np.random.default_rng(1)
        pts = rng.uniform(-0.6, 0.6, (64, 3)).astype(np.float32)
        pts = pts[np.linalg.norm(pts, axis=-1) > 0.1]
        out = geo(Tensor(pts.reshape(2, -1, 3)), output_normal=True)  # arbitrary leading dims
        normal = out["normal"].asnumpy().reshape(-1, 3)
        # density decreases outwards: -grad points away from the centre
        radial = pts / np.linalg.norm(pts, axis=-1, keepdims=True)
        np.testing.assert_allclose(normal, radial, atol=1e-3)
        np.testing.assert_allclose(out["shading_normal"].asnumpy().reshape(-1, 3), normal)


def test_pred_normal_is_unit():
    geo = make_geometry(normal_type="pred")
    out = geo(Tensor(np.random.default_rng(0).uniform(-1, 1, (10, 3)).astype(np.float32)), output_normal=True)
    np.testing.assert_allclose(np.linalg.norm(out["normal"].asnumpy(), axis=-1), 1.0, rtol=1e-5)


def test_unknown_config_key_raises():
    with pytest.raises(ConfigError, match="densty_bias"):
        threestudio.find("implicit-volume")({"densty_bias": 1.0})
    with pytest.raises(ConfigError, match="colour"):
        threestudio.find("solid-color-background")({"colour": [1, 1, 1]})
    with pytest.raises(ConfigError, match="n_level"):
        get_encoding(3, {"otype": "HashGrid", "n_level": 4})
    with pytest.raises(ConfigError, match="normal_type"):
        make_geometry(normal_type="sobel")


def test_no_material_is_activation_of_features():
    mat = threestudio.find("no-material")({"color_activation": "sigmoid"})
    assert mat.requires_normal is False
    feats = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    np.testing.assert_allclose(mat(features=Tensor(feats)).asnumpy(), 1 / (1 + np.exp(-feats)), rtol=1e-6)
    np.testing.assert_allclose(mat.export(Tensor(feats))["albedo"].asnumpy(), 1 / (1 + np.exp(-feats)), rtol=1e-6)


def test_diffuse_with_point_light_shading_formulas():
    mat = threestudio.find("diffuse-with-point-light-material")({})
    assert mat.requires_normal is True
    rng = np.random.default_rng(0)
    n = 16
    feats = rng.normal(size=(n, 3)).astype(np.float32)
    pos = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    normal = rng.normal(size=(n, 3))
    normal = (normal / np.linalg.norm(normal, axis=-1, keepdims=True)).astype(np.float32)
    light = np.tile(np.array([[2.0, 1.0, 3.0]], np.float32), (n, 1))
    albedo = 1 / (1 + np.exp(-feats))
    ldir = (light - pos) / np.linalg.norm(light - pos, axis=-1, keepdims=True)
    lambert = np.clip((normal * ldir).sum(-1, keepdims=True), 0, None)
    textureless = lambert * 0.9 + 0.1
    kwargs = dict(features=Tensor(feats), positions=Tensor(pos), shading_normal=Tensor(normal),
                  light_positions=Tensor(light))
    expect = {"albedo": albedo, "textureless": textureless, "diffuse": albedo * textureless}
    for shading, ref in expect.items():
        np.testing.assert_allclose(mat(shading=shading, **kwargs).asnumpy(), np.broadcast_to(ref, (n, 3)),
                                   rtol=1e-5, atol=1e-6)
    # ambient_ratio overrides the light colours
    ref = albedo * (lambert * 0.3 + 0.7)
    np.testing.assert_allclose(mat(shading="diffuse", ambient_ratio=0.7, **kwargs).asnumpy(), ref, rtol=1e-5)

    # eval: diffuse after the ambient-only phase, albedo during it
    mat.set_train(False)
    mat.do_update_step(0, 5000)
    np.testing.assert_allclose(mat(**kwargs).asnumpy(), expect["diffuse"], rtol=1e-5, atol=1e-6)
    mat.do_update_step(0, 10)
    np.testing.assert_allclose(mat(**kwargs).asnumpy(), albedo, rtol=1e-5)

    # train: albedo w.p. 1 - 0.75; else textureless / diffuse 50:50
    mat.set_train(True)
    mat.do_update_step(0, 5000)
    random.seed(0)
    picks = {"albedo": 0, "textureless": 0, "diffuse": 0}
    for _ in range(400):
        out = mat(**kwargs).asnumpy()
        picks[next(k for k, v in expect.items() if np.allclose(out, v, atol=1e-5))] += 1
    assert abs(picks["albedo"] / 400 - 0.25) < 0.07
    assert abs(picks["textureless"] / 400 - 0.375) < 0.07
    assert abs(picks["diffuse"] / 400 - 0.375) < 0.07
    assert mat.export(Tensor(feats))["albedo"].shape == (n, 3)


def test_neural_environment_map_background():
    bg = threestudio.find("neural-environment-map-background")({"random_aug": True, "share_aug_bg": True})
    dirs = np.random.default_rng(0).normal(size=(4, 5, 6, 3)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    bg.set_train(False)
    out = bg(dirs=Tensor(dirs)).asnumpy()
    assert out.shape == (4, 5, 6, 3) and out.min() > 0 and out.max() < 1 and out.std() > 1e-4
    # network output reproduces a NumPy evaluation of SH degree 3 -> ReLU MLP -> sigmoid
    d = dirs.reshape(-1, 3)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    sh = np.stack([np.full_like(x, 0.28209479177387814), -0.48860251190291987 * y, 0.48860251190291987 * z,
                   -0.48860251190291987 * x, 1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                   0.94617469575755997 * z * z - 0.31539156525251999, -1.0925484305920792 * x * z,
                   0.54627421529603959 * (x * x - y * y)], -1)
    h = sh
    weights = [layer.weight.asnumpy() for layer in bg.network.layers if hasattr(layer, "weight")]
    for w in weights[:-1]:
        h = np.maximum(h @ w.T, 0)
    ref = 1 / (1 + np.exp(-(h @ weights[-1].T)))
    np.testing.assert_allclose(out.reshape(-1, 3), ref, rtol=1e-4, atol=1e-6)

    # training with random_aug: solid colours w.p. 0.5, one colour for the whole batch (share_aug_bg)
    bg.set_train(True)
    random.seed(0)
    np.random.seed(0)
    n_aug = 0
    for _ in range(60):
        o = bg(dirs=Tensor(dirs)).asnumpy()
        if np.allclose(o, o[0, 0, 0]):
            n_aug += 1
    assert 18 <= n_aug <= 42
    bg2 = threestudio.find("neural-environment-map-background")({"random_aug": True, "random_aug_prob": 1.0})
    bg2.set_train(True)
    o = bg2(dirs=Tensor(dirs)).asnumpy()
    per_view = o.reshape(4, -1, 3)
    assert np.allclose(per_view, per_view[:, :1]) and not np.allclose(per_view[0, 0], per_view[1, 0])
    # eval_color in evaluation
    bg3 = threestudio.find("neural-environment-map-background")({"eval_color": [0.2, 0.4, 0.6]})
    bg3.set_train(False)
    np.testing.assert_allclose(bg3(dirs=Tensor(dirs)).asnumpy(), np.broadcast_to([0.2, 0.4, 0.6], (4, 5, 6, 3)),
                               rtol=1e-6)


def test_solid_color_background():
    dirs = Tensor(np.zeros((2, 3, 4, 3), np.float32))
    bg = threestudio.find("solid-color-background")({"color": [0.5, 0.25, 1.0]})
    np.testing.assert_allclose(bg(dirs=dirs).asnumpy(), np.broadcast_to([0.5, 0.25, 1.0], (2, 3, 4, 3)))
    assert bg.trainable_params() == []
    learned = threestudio.find("solid-color-background")({"learned": True})
    assert [p.name for p in learned.trainable_params()] == ["env_color"]
    aug = threestudio.find("solid-color-background")({"random_aug": True, "random_aug_prob": 1.0})
    aug.set_train(True)
    out = aug(dirs=dirs).asnumpy()
    assert out.shape == (2, 3, 4, 3) and np.allclose(out, out[:, :1, :1]) and not np.allclose(out[0], out[1])
    aug.set_train(False)
    np.testing.assert_allclose(aug(dirs=dirs).asnumpy(), 1.0)


def test_renders_and_trains_with_the_volume_renderer():
    """Real modules in nerf-volume-renderer: gradients reach every trainable parameter."""
    import mindspore as ms
    from render_scene import orbit_rays

    np.random.seed(0)
    geo = make_geometry(normal_type="finite_difference")
    mat = threestudio.find("diffuse-with-point-light-material")({"ambient_only_steps": 0})
    bg = threestudio.find("neural-environment-map-background")({})
    renderer = threestudio.find("nerf-volume-renderer")({"radius": 1.0, "num_samples_per_ray": 64}, geo, mat, bg)
    o, d = orbit_rays(n_views=2, height=16, width=16)
    rays = (Tensor(o), Tensor(d), Tensor(np.full((2, 3), 3.0, np.float32)))
    renderer.set_train(True)
    for k in range(3):
        renderer.do_update_step(0, 16 * k)
    params = geo.trainable_params() + bg.trainable_params()

    def loss():
        return renderer(*rays, shading="diffuse")["comp_rgb"].mean()

    _, grads = ms.value_and_grad(loss, None, params)()
    for p, g in zip(params, grads):
        g = g.asnumpy()
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, p.name

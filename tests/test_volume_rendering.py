"""Packed alpha compositing vs a NumPy reference, and the nerf-volume-renderer end to end."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

import threestudio
from render_scene import ConstantBackground, SphereGeometry, TintMaterial, orbit_rays
from threestudio.utils.shape_buckets import bucket_size
from threestudio.models.renderers.volume_rendering import PackedLayout, composite


def random_packed(counts, seed=0):
    """Ragged rays (empty ones included) with sorted, contiguous-ish intervals."""
    rng = np.random.default_rng(seed)
    ray_indices, t_starts, t_ends = [], [], []
    for r, c in enumerate(counts):
        dt = rng.uniform(0.005, 0.05, c)
        t0 = rng.uniform(0.5, 2.0) + np.concatenate([[0.0], np.cumsum(dt)[:-1]]) if c else np.zeros(0)
        ray_indices += [r] * c
        t_starts.append(t0)
        t_ends.append(t0 + dt)
    m = len(ray_indices)
    sigmas = rng.uniform(0.0, 40.0, m) * (rng.uniform(size=m) > 0.3)
    values = rng.uniform(size=(m, 3))
    return (np.array(ray_indices, np.int64), np.concatenate(t_starts).astype(np.float32),
            np.concatenate(t_ends).astype(np.float32), sigmas.astype(np.float32), values.astype(np.float32))


def reference_composite(ray_indices, t_starts, t_ends, sigmas, values, n_rays):
    """Sequential front-to-back compositing in float64."""
    w = np.zeros(len(ray_indices))
    out = {k: np.zeros((n_rays, c)) for k, c in (("opacity", 1), ("depth", 1), ("z_variance", 1), ("rgb", 3))}
    t_mid = (t_starts.astype(np.float64) + t_ends) / 2
    for r in range(n_rays):
        idx = np.nonzero(ray_indices == r)[0]
        trans = 1.0
        for i in idx:
            alpha = 1.0 - np.exp(-float(sigmas[i]) * (float(t_ends[i]) - float(t_starts[i])))
            w[i] = trans * alpha
            trans *= 1.0 - alpha
        out["opacity"][r] = w[idx].sum()
        out["depth"][r] = (w[idx] * t_mid[idx]).sum()
        out["z_variance"][r] = (w[idx] * (t_mid[idx] - out["depth"][r, 0]) ** 2).sum()
        out["rgb"][r] = (w[idx, None] * values[idx]).sum(0)
    return w, out


COUNTS = [5, 0, 1, 37, 0, 300, 2, 64, 0]


def test_composite_matches_numpy_reference():
    ray_np, ts, te, sig, val = random_packed(COUNTS)
    layout = PackedLayout(ray_np, len(COUNTS))
    out = composite(Tensor(ts), Tensor(te), Tensor(sig), layout, {"rgb": Tensor(val)})
    w_ref, ref = reference_composite(ray_np, ts, te, sig, val, len(COUNTS))
    np.testing.assert_allclose(out["weights"].asnumpy()[:, 0], w_ref, atol=1e-5)
    for key in ("opacity", "depth", "z_variance", "rgb"):
        np.testing.assert_allclose(out[key].asnumpy(), ref[key], atol=1e-5, err_msg=key)
    # empty rays composite to exactly zero
    empty = [r for r, c in enumerate(COUNTS) if c == 0]
    assert np.all(out["opacity"].asnumpy()[empty] == 0)
    # long opaque rays saturate, the 1-sample ray does not
    assert out["opacity"].asnumpy()[5, 0] > 0.999


def test_composite_gradients_are_finite_and_match_finite_differences():
    ray_np, ts, te, sig, val = random_packed(COUNTS, seed=1)
    layout = PackedLayout(ray_np, len(COUNTS))
    rng = np.random.default_rng(2)
    proj = Tensor(rng.normal(size=(len(COUNTS), 3)).astype(np.float32))

    def loss(sigmas, values):
        out = composite(Tensor(ts), Tensor(te), sigmas, layout, {"rgb": values})
        return (out["rgb"] * proj).sum() + out["depth"].sum() * 0.1 + out["z_variance"].sum()

    sig_t, val_t = Tensor(sig), Tensor(val)
    _, (g_sig, g_val) = ms.value_and_grad(loss, grad_position=(0, 1))(sig_t, val_t)
    g_sig, g_val = g_sig.asnumpy(), g_val.asnumpy()
    assert np.all(np.isfinite(g_sig)) and np.all(np.isfinite(g_val))
    assert np.abs(g_sig).max() > 0 and np.abs(g_val).max() > 0

    # central differences on a few sigmas (float64 reference)
    def loss_np(s):
        _, ref = reference_composite(ray_np, ts, te, s, val, len(COUNTS))
        return (ref["rgb"] * proj.asnumpy()).sum() + ref["depth"].sum() * 0.1 + ref["z_variance"].sum()

    for i in [0, 3, 6, 50, 200]:
        e = np.zeros_like(sig, dtype=np.float64)
        e[i] = 1e-3
        fd = (loss_np(sig + e) - loss_np(sig - e)) / 2e-3
        assert abs(fd - g_sig[i]) <= 1e-3 + 1e-2 * abs(fd), (i, fd, g_sig[i])


def test_segmented_cumsum_keeps_precision_over_many_rays():
    # 4000 rays whose optical thickness sums to ~100 each: a single global float32 cumsum
    # would reach 4e5 and lose ~0.03 absolute precision; per-ray rows stay exact.
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 40, 4000)
    ray_np = np.repeat(np.arange(counts.size), counts)
    tau = rng.uniform(0, 5, ray_np.size)
    layout = PackedLayout(ray_np, counts.size)
    got = layout.exclusive_cumsum(Tensor(tau.astype(np.float32))).asnumpy()
    starts = np.cumsum(counts) - counts
    excl = np.cumsum(tau) - tau
    ref = excl - excl[starts[ray_np]]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    assert np.abs(got - ref)[ref < 5].max() < 1e-5  # where exp(-x) is still visible


# ---------------------------------------------------------------------- renderer
def make_renderer(requires_normal=False, **cfg):
    geo, mat, bg = SphereGeometry(), TintMaterial(requires_normal), ConstantBackground()
    renderer = threestudio.find("nerf-volume-renderer")(cfg, geo, mat, bg)
    return renderer, geo, mat, bg


def warm_grid(renderer, steps=5):
    renderer.set_train(True)
    for k in range(steps):
        renderer.update_step(0, 16 * k)
    renderer.set_train(False)


@pytest.fixture(scope="module")
def rays():
    o, d = orbit_rays(n_views=2, height=32, width=32)
    return Tensor(o), Tensor(d), Tensor(np.zeros((2, 3), np.float32))


def test_occupancy_grid_prunes_5x_with_the_same_image(rays):
    np.random.seed(0)
    dense, *_ = make_renderer(grid_prune=False)
    dense.set_train(False)
    ref = dense(*rays)
    n_dense = dense.stats["n_samples"]
    assert dense.stats["n_samples"] == dense.stats["n_marched"]
    ref_rgb, ref_op = ref["comp_rgb"].asnumpy(), ref["opacity"].asnumpy()

    # the centre pixel sees the sphere's front at distance 2.5 - 0.25 (soft edge ~ 0.02)
    op, depth = ref_op[0, 16, 16, 0], ref["depth"].asnumpy()[0, 16, 16, 0]
    assert op > 0.999 and abs(depth / op - 2.25) < 0.03
    # a corner pixel misses it: background only
    np.testing.assert_allclose(ref_rgb[0, 0, 0], [0.1, 0.2, 0.7], atol=1e-6)

    for cfg in ({"prune_alpha_threshold": False}, {}):
        pruned, *_ = make_renderer(**cfg)
        warm_grid(pruned)
        out = pruned(*rays)
        stats = pruned.stats
        # evaluated samples: densities on the grid samples + full geometry on the kept ones
        n_evaluated = stats["n_samples"] + (stats["n_grid"] if not cfg else 0)
        assert n_dense / n_evaluated >= 5, (n_dense, stats)
        mse = float(((out["comp_rgb"].asnumpy() - ref_rgb) ** 2).mean())
        assert -10 * np.log10(mse) >= 35, (cfg, mse)
        # the grid (occ > 0.01) and alpha pruning only drop low-density fog: opaque and
        # empty pixels agree, only rays grazing the soft edge lose some opacity
        err = np.abs(out["opacity"].asnumpy() - ref_op)
        solid_or_empty = (ref_op > 0.99) | (ref_op < 1e-3)
        assert solid_or_empty.mean() > 0.8 and err[solid_or_empty].max() < 2e-3, cfg
    assert n_dense / stats["n_samples"] >= 20, (n_dense, stats)


def test_chunked_eval_equals_unchunked(rays):
    np.random.seed(1)
    whole, geo, mat, bg = make_renderer(requires_normal=True)
    warm_grid(whole)
    chunked = threestudio.find("nerf-volume-renderer")({"eval_chunk_size": 300}, geo, mat, bg)
    ms.load_param_into_net(chunked, {p.name: p for p in whole.get_parameters()})
    a, b = whole(*rays), chunked(*rays)
    assert set(a) == set(b) and "comp_normal" in a
    for key in a:
        np.testing.assert_allclose(a[key].asnumpy(), b[key].asnumpy(), atol=1e-6, err_msg=key)
    assert chunked.stats["n_samples"] == whole.stats["n_samples"]
    normal = a["comp_normal"].asnumpy()
    assert normal.min() >= 0 and normal.max() <= 1


def test_training_render_gradients_reach_all_modules(rays):
    np.random.seed(2)
    renderer, geo, mat, bg = make_renderer(requires_normal=True, return_comp_normal=True)
    warm_grid(renderer)
    renderer.set_train(True)
    params = geo.trainable_params() + mat.trainable_params() + bg.trainable_params()
    assert len(params) == 4

    def loss():
        out = renderer(*rays)
        return out["comp_rgb"].mean() + 0.1 * out["depth"].mean() + (out["weights"] * out["t_points"]).sum() * 1e-3

    value, grads = ms.value_and_grad(loss, None, params)()
    for p, g in zip(params, grads):
        g = g.asnumpy()
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, p.name
    out = renderer(*rays)
    m = out["ray_indices"].shape[0]
    # packed outputs are padded to a bucketed count with zero-length (zero-weight) samples
    assert m == bucket_size(renderer.stats["n_samples"]) and renderer.stats["n_samples"] > 0
    assert np.all(out["weights"].asnumpy()[renderer.stats["n_samples"]:] == 0)
    for key in ("weights", "t_points", "t_intervals", "t_dirs", "points", "normal", "density"):
        assert out[key].shape[0] == m, key
    assert out["comp_normal"].shape == (2, 32, 32, 3)
    # constant background colour given per view replaces the background network
    white = renderer(*rays, bg_color=Tensor(np.ones((2, 3), np.float32)))
    rgb, op = white["comp_rgb"].asnumpy(), white["opacity"].asnumpy()
    np.testing.assert_allclose(rgb[0, 0, 0], [1, 1, 1], atol=1e-6)
    assert np.all(rgb <= 1 + 1e-5) and op.max() > 0.99

"""Hash grid vs an independent float64 NumPy implementation of tcnn's HashGrid spec."""
import ctypes

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from threestudio.models import hashgrid
from threestudio.models.networks import get_encoding

CFG = dict(otype="HashGrid", n_levels=4, n_features_per_level=2, log2_hashmap_size=8,
           base_resolution=4, per_level_scale=2.0)


def numpy_layout(n_levels, log2_size, base, pls):
    """tcnn spec: scale_l = 2^(l log2 pls) base - 1 (float32), res = ceil(scale) + 1, level sizes
    min(next8(res^3), 2^log2) laid out consecutively. Returns [(scale, res, size, offset)], total."""
    layout, offset = [], 0
    for l in range(n_levels):
        scale = float(np.float32(np.exp2(np.float32(l) * np.log2(np.float32(pls))) * np.float32(base) - 1))
        res = int(np.ceil(scale)) + 1
        size = min(-(-res ** 3 // 8) * 8, 2 ** log2_size)
        layout.append((scale, res, size, offset))
        offset += size
    return layout, offset


def reference(x, table, layout, F, G):
    """pos = x scale + 0.5; dense index x + y res + z res^2 when res^3 fits the level, else XOR of
    uint32 products with primes (1, 2654435761, 805459861); modulo level size; trilinear weights.
    Returns the encoding [N, L*F] and the gradients of sum(out * G) w.r.t. table and x."""
    N = x.shape[0]
    L = len(layout)
    tab = table.reshape(-1, F)
    out = np.zeros((N, L, F))
    g_tab = np.zeros_like(tab)
    g_x = np.zeros((N, 3))
    primes = np.array([1, 2654435761, 805459861], np.uint64)
    for l, (scale, res, size, offset) in enumerate(layout):
        pos = x.astype(np.float64) * scale + 0.5
        cell = np.floor(pos).astype(np.int64)
        frac = pos - cell
        for corner in range(8):
            bits = np.array([(corner >> d) & 1 for d in range(3)])
            c = cell + bits  # [N, 3]
            if res ** 3 <= size:
                idx = (c[:, 0] + c[:, 1] * res + c[:, 2] * res * res) % size
            else:
                cu = c.astype(np.uint64)
                h = ((cu * primes) & np.uint64(0xFFFFFFFF))
                idx = (h[:, 0] ^ h[:, 1] ^ h[:, 2]).astype(np.int64) % size
            idx = idx + offset
            fw = np.where(bits, frac, 1 - frac)  # [N, 3]
            w = fw.prod(axis=1)
            val = tab[idx]
            out[:, l] += w[:, None] * val
            np.add.at(g_tab, idx, w[:, None] * G[:, l])
            gv = (val * G[:, l]).sum(axis=1)  # d/dw
            for d in range(3):
                others = np.prod(np.delete(fw, d, axis=1), axis=1)
                sign = 1.0 if bits[d] else -1.0
                g_x[:, d] += gv * others * sign * scale
    return out.reshape(N, L * F), g_tab.reshape(-1), g_x


@pytest.mark.parametrize("backend", hashgrid.available_backends())
def test_hashgrid_matches_numpy(backend):
    enc = get_encoding(3, CFG)
    grid = enc.encoding
    grid.set_implementation(backend)
    layout, n_entries = numpy_layout(4, 8, 4, 2.0)
    # level resolutions 4, 8, 16, 32: levels 0 is dense (4^3 = 64 <= 256), 1-3 are hashed
    assert [r for _, r, _, _ in layout] == [4, 8, 16, 32]
    assert grid.layout.hashed.tolist() == [False, True, True, True]
    assert grid.params.shape == (n_entries * 2,) == (2 * (64 + 3 * 256),)
    rng = np.random.default_rng(0)
    table = rng.uniform(-1, 1, grid.params.shape).astype(np.float32)
    grid.params.set_data(Tensor(table))
    x = rng.uniform(0, 1, (300, 3)).astype(np.float32)
    x[:4] = [[0, 0, 0], [1, 1, 1], [0.5, 0.25, 1.0], [1e-7, 0.999999, 0.3]]
    G = rng.normal(size=(300, 4, 2))
    ref, ref_gt, ref_gx = reference(x, table, layout, 2, G)

    out = enc(Tensor(x)).asnumpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)

    def loss(xt, params):
        return (grid.backend(xt, params) * Tensor(G.reshape(300, 8).astype(np.float32))).sum()

    gx, gt = ms.grad(loss, grad_position=(0, 1))(Tensor(x), grid.params)
    np.testing.assert_allclose(gt.asnumpy(), ref_gt, atol=1e-5)
    # d/dx carries the level scale (up to 31) and sums 8 corners x 4 levels (|ref| ~ 100):
    # float32 round-off makes 1e-5 relative to the largest entry the honest bound.
    assert np.abs(gx.asnumpy() - ref_gx).max() <= 1e-5 * np.abs(ref_gx).max()


def _run_kernel(lib, entry, arrays):
    """Calls an AOT entry point of the C++ hash grid the way MindSpore does, on NumPy buffers."""
    k = len(arrays)
    shapes = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    rc = getattr(lib, entry)(k, (ctypes.c_void_p * k)(*[a.ctypes.data for a in arrays]),
                             (ctypes.c_int * k)(*[a.ndim for a in arrays]),
                             (ctypes.POINTER(ctypes.c_int64) * k)(*[ctypes.cast(p, ctypes.POINTER(ctypes.c_int64))
                                                                    for p in shapes]), None, None, None)
    assert rc == 0


def test_cpp_kernel_over_chunks_is_exact_and_independent_of_the_thread_count():
    """The kernel runs points in chunks of 2^14 and levels in parallel: over 8 full chunks and a
    partial one it matches the float64 reference, and 1 and 3 OpenMP threads give the same bits
    (each level's table gradient sums in point order, d/dx sums the levels in level order)."""
    from threestudio.models.hashgrid import cpp_backend
    lib = ctypes.CDLL(cpp_backend.library())
    gomp = ctypes.CDLL("libgomp.so.1")  # the OpenMP runtime the kernel is linked with
    layout, n_entries = numpy_layout(4, 8, 4, 2.0)
    meta, scale = cpp_backend.kernel_tables(hashgrid.GridLayout(3, 4, 2, 8, 4, 2.0))
    rng = np.random.default_rng(1)
    n = (1 << 17) + 500
    x = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    table = rng.uniform(-1, 1, n_entries * 2).astype(np.float32)
    G = rng.normal(size=(n, 8)).astype(np.float32)
    runs, previous = [], gomp.omp_get_max_threads()
    for threads in (1, 3):
        gomp.omp_set_num_threads(threads)
        out, d_table, d_x = np.empty((n, 8), np.float32), np.empty_like(table), np.empty_like(x)
        _run_kernel(lib, "hashgrid_fwd", [x, table, meta, scale, out])
        _run_kernel(lib, "hashgrid_bwd", [x, table, meta, scale, G, d_table, d_x])
        runs.append((out, d_table, d_x))
    gomp.omp_set_num_threads(previous)
    for one, three in zip(*runs):
        assert np.array_equal(one, three)
    ref, ref_gt, ref_gx = reference(x, table.astype(np.float64), layout, 2, G.reshape(n, 4, 2).astype(np.float64))
    out, d_table, d_x = runs[0]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # ~4000 points per entry summed in fp32 (3.5e-6 of the largest entry measured; sqrt(4000) *
    # 2^-24 * the partial sums is the expected size)
    assert np.abs(d_table - ref_gt).max() <= 2e-5 * np.abs(ref_gt).max()
    assert np.abs(d_x - ref_gx).max() <= 1e-5 * np.abs(ref_gx).max()


@pytest.mark.parametrize("features", [1, 4])
def test_cpp_kernel_other_feature_counts(features):
    """F != 2 takes the kernel's generic feature loop."""
    from threestudio.models.hashgrid import cpp_backend
    lib = ctypes.CDLL(cpp_backend.library())
    layout, n_entries = numpy_layout(4, 8, 4, 2.0)
    meta, scale = cpp_backend.kernel_tables(hashgrid.GridLayout(3, 4, features, 8, 4, 2.0))
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (500, 3)).astype(np.float32)
    table = rng.uniform(-1, 1, n_entries * features).astype(np.float32)
    G = rng.normal(size=(500, 4 * features)).astype(np.float32)
    out, d_table, d_x = np.empty((500, 4 * features), np.float32), np.empty_like(table), np.empty_like(x)
    _run_kernel(lib, "hashgrid_fwd", [x, table, meta, scale, out])
    _run_kernel(lib, "hashgrid_bwd", [x, table, meta, scale, G, d_table, d_x])
    ref, ref_gt, ref_gx = reference(x, table.astype(np.float64), layout, features,
                                    G.reshape(500, 4, features).astype(np.float64))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(d_table, ref_gt, atol=1e-5)
    assert np.abs(d_x - ref_gx).max() <= 1e-5 * np.abs(ref_gx).max()


def test_default_layout_matches_tcnn_table_size():
    # threestudio default: 16 levels, 2^19 entries, base 16, per-level scale 1.4472692 (max res 4096)
    enc = get_encoding(3, dict(otype="HashGrid", n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                               base_resolution=16, per_level_scale=1.447269237440378))
    lay = enc.encoding.layout
    # scale_l = 16 * 1.4473^l - 1, resolution = ceil(scale) + 1
    assert lay.resolution[:4].tolist() == [16, 24, 34, 49] and lay.resolution[-1] == 4096
    assert lay.n_dense_levels == 5  # 71^3 = 357911 <= 2^19 < 102^3
    assert lay.size[:5].tolist() == [4096, 13824, 39304, 117656, 357912]  # res^3 padded to 8
    assert lay.n_params == 12599920
    assert enc.n_output_dims == 32
    assert enc.encoding.params.shape[0] == 2 * int(lay.size.sum())
    init = enc.encoding.params.asnumpy()
    assert np.abs(init).max() <= 1e-4 and init.std() > 3e-5


def test_auto_backend_falls_back_to_ops_when_the_kernel_cannot_build(monkeypatch, caplog):
    from threestudio.models.hashgrid import cpp_backend
    monkeypatch.setattr(cpp_backend, "_library", RuntimeError("no compiler"))
    layout = hashgrid.GridLayout(3, 2, 2, 8, 4, 2.0)
    with caplog.at_level("WARNING"):
        backend = hashgrid.make_backend(layout, "auto", device_target="CPU")
    assert backend.name == "ops" and "no compiler" in caplog.text
    with pytest.raises(RuntimeError, match="no compiler"):
        hashgrid.make_backend(layout, "cpp")


def test_progressive_band_hashgrid_masks_levels():
    enc = get_encoding(3, dict(CFG, otype="ProgressiveBandHashGrid", start_level=1, start_step=10, update_steps=5))
    x = Tensor(np.random.default_rng(0).uniform(0, 1, (7, 3)).astype(np.float32))
    assert np.all(enc(x).asnumpy() == 0)  # threestudio: all masked until the first update_step
    enc.encoding.update_step(0, 17)  # level = 1 + (17 - 10) // 5 = 2
    out = enc(x).asnumpy()
    assert np.all(out[:, 4:] == 0) and np.all(out[:, :4] != 0)


def test_auto_backend_depends_on_the_device_target(monkeypatch):
    """``auto``: the C++ kernel only on CPU; pure ops on Ascend and GPU (no device needed: nothing
    of the C++ kernel is built or checked there)."""
    from threestudio.models.hashgrid import cpp_backend
    monkeypatch.delenv(hashgrid.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(cpp_backend, "_library", None)
    monkeypatch.setattr(cpp_backend, "_build", lambda: pytest.fail("the C++ kernel was built off CPU"))
    layout = hashgrid.GridLayout(3, 2, 2, 8, 4, 2.0)
    for target in ("Ascend", "GPU"):
        assert hashgrid.make_backend(layout, "auto", device_target=target).name == "ops"
    assert hashgrid.auto_candidates("CPU") == ("cpp", "ops")
    # the current target (CPU in the tests) as MindSpore reports it: under a mocked non-CPU
    # target a config's grid resolves to ops too
    real_get_context = ms.get_context
    monkeypatch.setattr(ms, "get_context", lambda key: "Ascend" if key == "device_target" else real_get_context(key))
    assert get_encoding(3, dict(CFG)).encoding.backend.name == "ops"


def test_backend_is_a_config_key_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv(hashgrid.ENV_OVERRIDE, raising=False)
    assert get_encoding(3, dict(CFG, backend="ops")).encoding.backend.name == "ops"
    monkeypatch.setenv(hashgrid.ENV_OVERRIDE, "ops")
    assert hashgrid.requested_backend("cpp") == "ops"
    monkeypatch.delenv(hashgrid.ENV_OVERRIDE)
    assert hashgrid.requested_backend("cpp") == "cpp" and hashgrid.requested_backend(None) == "auto"
    with pytest.raises(ValueError, match="unknown hash grid backend 'cuda'"):
        get_encoding(3, dict(CFG, backend="cuda"))

"""OccupancyGrid: marching, EMA updates (nerfacc semantics) and checkpoint round-trip."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from render_scene import SphereGeometry
from threestudio.utils.shape_buckets import bucket_size
from threestudio.models.estimators.occupancy_grid import OccupancyGrid, visibility_from_density_np

AABB = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def sphere_occ(radius=0.3, value=0.5):
    def fn(x):
        return ops.cast(ops.norm(x, dim=-1, keepdim=True) < radius, ms.float32) * value
    return fn


def test_marching_all_occupied_is_uniform_inside_the_box():
    grid = OccupancyGrid(AABB, resolution=8)
    grid.fill(True)
    rays_o = np.array([[-3.0, 0.1, 0.2], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0], [-3.0, 0.3, 0.3]])
    rays_d = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ray_idx, t0, t1 = grid.sampling(rays_o, rays_d, render_step_size=0.25, near_plane=0.0,
                                    far_plane=3.6, early_stop_eps=0.0)
    # ray 0 crosses x in [-1, 1] at t in [2, 4], cut by the far plane at 3.6; step 0.25
    np.testing.assert_allclose(t0[ray_idx == 0], 2.0 + 0.25 * np.arange(6))
    np.testing.assert_allclose(t1 - t0, 0.25)
    # ray 1 starts inside the box: t in [0, 1]
    np.testing.assert_allclose(t0[ray_idx == 1], 0.25 * np.arange(4))
    assert (ray_idx == 2).sum() == 0  # misses the box
    assert np.all(np.diff(ray_idx) >= 0)
    assert grid.last_num_marched == ray_idx.size == 16


def test_marching_skips_unoccupied_cells_and_jitters_per_ray():
    grid = OccupancyGrid(AABB, resolution=4)
    binaries = np.zeros((1, 4, 4, 4), bool)
    binaries[0, 1, :, :] = True  # x in [-0.5, 0)
    grid.binaries.set_data(Tensor(binaries))
    rays_o = np.tile([[-3.0, 0.05, 0.05]], (64, 1))
    rays_d = np.tile([[1.0, 0.0, 0.0]], (64, 1))
    np.random.seed(0)
    ray_idx, t0, t1 = grid.sampling(rays_o, rays_d, render_step_size=0.1, stratified=True, early_stop_eps=0.0)
    mid_x = -3.0 + (t0 + t1) / 2
    assert np.all((mid_x >= -0.5) & (mid_x < 0.0))
    counts = np.bincount(ray_idx, minlength=64)
    assert set(counts) <= {4, 5}
    offsets = [t0[ray_idx == r][0] % 0.1 for r in range(64)]
    assert np.std(offsets) > 0.02  # one random offset per ray


def brute_force_march(grid, rays_o, rays_d, near, step):
    """Reference: every step inside the box, kept when its midpoint's cell is occupied."""
    from threestudio.models.estimators.occupancy_grid import ray_aabb_intersect
    lo, hi = ray_aabb_intersect(rays_o, rays_d, np.array(AABB))
    lo, hi = np.maximum(lo, near), hi
    binaries = grid.binaries.asnumpy().reshape(-1)
    ray_idx, t_starts = [], []
    for r in range(len(rays_o)):
        if hi[r] <= lo[r]:
            continue
        k = np.arange(np.ceil((lo[r] - near[r]) / step - 1e-6), np.floor((hi[r] - near[r]) / step + 1e-6))
        t0 = near[r] + k * step
        keep = binaries[grid.cell_index(rays_o[r] + rays_d[r] * (t0 + step / 2)[:, None])]
        ray_idx += [r] * int(keep.sum())
        t_starts.append(t0[keep])
    return np.array(ray_idx), np.concatenate(t_starts)


def test_segment_marching_equals_brute_force_marching():
    np.random.seed(4)
    grid = OccupancyGrid(AABB, resolution=32)
    grid.binaries.set_data(Tensor(np.random.rand(1, 32, 32, 32) < 0.1))
    rays_o = np.random.uniform(-1.5, 1.5, (300, 3))
    rays_o[:100] *= 2.0  # some start outside, some inside the box
    rays_d = np.random.normal(size=(300, 3))
    rays_d /= np.linalg.norm(rays_d, axis=-1, keepdims=True)
    np.random.seed(5)
    ray_idx, t0, t1 = grid.sampling(rays_o, rays_d, render_step_size=0.01, stratified=True, early_stop_eps=0.0)
    np.random.seed(5)
    near = np.random.rand(300) * 0.01
    ref_idx, ref_t0 = brute_force_march(grid, rays_o, rays_d, near, 0.01)
    assert ray_idx.size > 800
    np.testing.assert_array_equal(ray_idx, ref_idx)
    np.testing.assert_allclose(t0, ref_t0, atol=1e-6)


def test_visibility_alpha_threshold_and_early_stop():
    # ray 0: thin then opaque -> samples after the opaque one are invisible
    tau = np.array([0.001, 0.5, 20.0, 1.0, 1.0, 0.3, 0.001, 0.2])
    ray = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    vis = visibility_from_density_np(tau, ray, early_stop_eps=1e-4, alpha_thre=0.01)
    np.testing.assert_array_equal(vis, [False, True, True, False, False, True, False, True])


def test_update_ema_threshold_and_cell_sampling():
    np.random.seed(0)
    grid = OccupancyGrid(AABB, resolution=16)
    grid.set_train(True)
    sizes = []

    def occ_fn(x):
        sizes.append(x.shape[0])
        return sphere_occ()(x)

    grid.update_every_n_steps(step=5, occ_eval_fn=occ_fn)  # not a multiple of 16: no update
    assert sizes == [] and not grid.binaries.asnumpy().any()
    for step in (0, 16, 32):
        grid.update_every_n_steps(step=step, occ_eval_fn=occ_fn)
    assert sizes == [16 ** 3] * 3  # warm-up: every cell
    occs = grid.occs.asnumpy().reshape(16, 16, 16)
    centres = (np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1) + 0.5) / 8 - 1
    r = np.linalg.norm(centres, axis=-1)
    assert np.all(occs[r < 0.3 - 0.11] == 0.5) and np.all(occs[r > 0.3 + 0.11] == 0)
    binaries = grid.binaries.asnumpy()[0]
    np.testing.assert_array_equal(binaries, occs > 0.01)  # thre = min(mean positive occ, 0.01)

    # after warm-up: n/4 random cells + n/4 of the occupied ones (fewer if fewer occupied)
    grid.update_every_n_steps(step=256, occ_eval_fn=occ_fn)
    # (evaluated in a batch padded to a bucketed size, so that PyNative sees few distinct shapes)
    assert sizes[-1] == bucket_size(16 ** 3 // 4 + min(16 ** 3 // 4, int(binaries.sum())))

    # density gone: occupancy decays by 0.95 per visit (max(0.95 occ, 0)), never below 0
    before = grid.occs.asnumpy().copy()
    grid._update(0, lambda x: ops.zeros((x.shape[0], 1), ms.float32))
    np.testing.assert_allclose(grid.occs.asnumpy(), before * 0.95, rtol=1e-6)


def test_grid_state_round_trips_through_checkpoint(tmp_path):
    np.random.seed(0)
    grid = OccupancyGrid(AABB, resolution=32)
    grid.set_train(True)
    geo = SphereGeometry(radius=0.4)
    grid._update(0, lambda x: geo.forward_density(x) * 0.01)
    path = str(tmp_path / "grid.ckpt")
    ms.save_checkpoint(grid, path)

    fresh = OccupancyGrid(AABB, resolution=32)
    assert not fresh.binaries.asnumpy().any()
    ms.load_param_into_net(fresh, ms.load_checkpoint(path), strict_load=True)
    np.testing.assert_array_equal(fresh.occs.asnumpy(), grid.occs.asnumpy())
    np.testing.assert_array_equal(fresh.binaries.asnumpy(), grid.binaries.asnumpy())
    assert 0 < grid.binaries.asnumpy().sum() < 32 ** 3 // 4

    rays_o = np.random.uniform(-2, 2, (200, 3))
    rays_d = -rays_o / np.linalg.norm(rays_o, axis=-1, keepdims=True)
    for a, b in zip(grid.sampling(rays_o, rays_d, render_step_size=0.01),
                    fresh.sampling(rays_o, rays_d, render_step_size=0.01)):
        np.testing.assert_array_equal(a, b)
    assert {p.name for p in grid.get_parameters()} == {"resolution", "aabbs", "occs", "binaries"}
    assert grid.trainable_params() == []

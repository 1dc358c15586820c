"""mvdream-system training with the real tiny config: exact resume, torch-AdamW optimizer, loss
terms, checkpoint checks."""
import random

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from launch_helpers import build_tiny
from threestudio.systems.optim import TorchAdamW
from threestudio.utils.checkpoint import CheckpointError, load_checkpoint
from threestudio.utils.trainer import restore_checkpoint

OVERRIDES = [
    "system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false",
    "data.width=[8,12]", "data.height=[8,12]", "data.resolution_milestones=[6]",
    "data.n_val_views=1", "data.eval_height=8", "data.eval_width=8", "trainer.val_check_interval=2",
    "system.renderer.num_samples_per_ray=16",
    # grid updates at steps 0 (warm-up: every cell), 3 and 6 (random cells): one on each side of
    # the resume point (4); the default interval (16) would need 4x the steps
    "system.renderer.grid_update_interval=3", "system.renderer.grid_warmup_steps=2",
    "system.guidance.min_step_percent=[0,0.98,0.02,8]", "system.guidance.max_step_percent=[0,0.98,0.5,8]",
    "system.loss.lambda_sparsity=0.5", "system.loss.lambda_opaque=0.1", "system.loss.lambda_z_variance=0.2",
]
N = 4


def build(trial_dir, extra=()):
    return build_tiny(trial_dir, OVERRIDES + list(extra))


def _seed_globals(seed):
    np.random.seed(seed)  # renderer sampling, occupancy-grid cells
    random.seed(seed)  # background random_aug


def test_resume_is_exact(tmp_path):
    """2N steps in one run == N steps, checkpoint, a fresh system, resume, N steps: same losses,
    parameters, occupancy grid and optimizer moments."""
    _, dm, system, trainer = build(tmp_path / "full")
    occs = [system.renderer.estimator.occs.asnumpy().copy()]
    full = []
    for stop in range(1, 2 * N + 1):  # step by step, to watch the grid change
        full += trainer.fit(system, dm, stop - 1, stop)["losses"]
        occs.append(system.renderer.estimator.occs.asnumpy().copy())
    full_state = system.state_arrays()
    assert (tmp_path / "full/save/it2-val/0.png").is_file()
    # the grid changes exactly at the update steps 0, 3, 6 (after steps 1, 4, 7)
    changed = [i for i in range(2 * N) if not np.array_equal(occs[i], occs[i + 1])]
    assert changed == [0, 3, 6], changed

    _, dm, system, trainer = build(tmp_path / "a")
    first = trainer.fit(system, dm, 0, N)
    _, dm, system, trainer = build(tmp_path / "b")
    _seed_globals(99)  # restore_checkpoint must bring back the global generators' states
    step = restore_checkpoint(first["checkpoint"], *load_checkpoint(first["checkpoint"]), system,
                              trainer.optimizer, trainer.params, dm)
    assert step == N
    second = trainer.fit(system, dm, step, 2 * N)["losses"]

    np.testing.assert_allclose(first["losses"] + second, full, rtol=1e-6, atol=1e-7)
    assert len(set(np.round(full, 6))) == 2 * N  # a real trace (it changes every step)
    resumed_state = system.state_arrays()
    assert set(resumed_state) == set(full_state)
    assert {"renderer.estimator.occs", "renderer.estimator.binaries", "geometry.encoding.encoding.params",
            "background.network.layers.0.weight"} <= set(full_state)
    for name, value in full_state.items():
        np.testing.assert_allclose(resumed_state[name], value, atol=1e-6, err_msg=name)
    # checkpoints of the two runs at step 2N hold the same optimizer moments
    a, _ = load_checkpoint(str(tmp_path / "full/ckpts/last.ckpt"))
    b, meta = load_checkpoint(str(tmp_path / "b/ckpts/last.ckpt"))
    assert meta["global_step"] == 2 * N and not any(k.startswith("state.guidance") for k in b)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    rows = (tmp_path / "b/metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == N + 1 and rows[-1].startswith(f"{2 * N},")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _, dm, system, trainer = build(tmp_path / "a")
    ckpt = trainer.fit(system, dm, 0, 1)["checkpoint"]
    _, dm2, other, trainer2 = build(tmp_path / "b", ["system.renderer.num_samples_per_ray=5"])
    with pytest.raises(CheckpointError, match="system.renderer config differs"):
        restore_checkpoint(ckpt, *load_checkpoint(ckpt), other, trainer2.optimizer, trainer2.params, dm2)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(bad))


def test_loss_terms_match_numpy(tmp_path):
    """Every regulariser of the system, from the real renderer's outputs, against NumPy."""
    extra = ["system.geometry.normal_type=finite_difference", "system.material.requires_normal=true",
             "system.loss.lambda_orient=[0,1.,10.,6]"]
    _, dm, system, _ = build(tmp_path, extra)
    system.set_train(True)
    batch = dm.train_dataset.collate_next(0)
    system.do_update_step(0, 0)
    _seed_globals(5)
    loss = float(system.training_loss(batch).asnumpy())
    log = system.train_log
    _seed_globals(5)  # the same samples and background again
    out = {k: v.asnumpy() for k, v in system.renderer(**batch).items() if hasattr(v, "asnumpy")}
    op = out["opacity"]
    assert 0.01 < op.mean() < 0.99 and (op > 0.5).any()  # every term is non-trivial
    cos = np.maximum((out["normal"] * out["t_dirs"]).sum(-1, keepdims=True), 0)
    orient = (out["weights"] * cos ** 2).sum() / (op > 0).sum()
    c = np.clip(op, 1e-3, 1 - 1e-3)
    ref = {"orient": orient, "sparsity": np.sqrt(op ** 2 + 0.01).mean(),
           "opaque": -(c * np.log(c) + (1 - c) * np.log(1 - c)).mean(),
           "z_variance": out["z_variance"][op > 0.5].mean()}
    for k, v in ref.items():
        assert log[f"train/loss_{k}"] == pytest.approx(float(v), rel=1e-4, abs=1e-6), k
    lambdas = {"sds": 1.0, "orient": 1.0, "sparsity": 0.5, "opaque": 0.1, "z_variance": 0.2}
    total = sum(lambdas[k] * log[f"train/loss_{k}"] for k in lambdas)
    assert loss == pytest.approx(total, rel=1e-5)


def test_torch_adamw_semantics():
    """Bias-corrected, decoupled weight decay: equal to torch.optim.AdamW (NumPy reference)."""
    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.a = Parameter(Tensor(np.float32([1.0, -2.0, 3.0])), name="a")
            self.b = Parameter(Tensor(np.float32([0.5, 0.1])), name="b")

    net = Net()
    opt = TorchAdamW([{"params": [net.a], "lr": 0.01, "weight_decay": 0.01},
                      {"params": [net.b], "lr": 0.1, "weight_decay": 0.0}], beta1=0.9, beta2=0.99, eps=1e-8)
    rng = np.random.default_rng(0)
    ref = {"a": [np.float64([1.0, -2.0, 3.0]), 0.0, 0.0, 0.01, 0.01], "b": [np.float64([0.5, 0.1]), 0.0, 0.0, 0.1, 0.0]}
    for t in range(1, 8):
        ga, gb = rng.standard_normal(3).astype(np.float32), rng.standard_normal(2).astype(np.float32)
        opt((Tensor(ga), Tensor(gb)))
        for k, g in (("a", ga), ("b", gb)):
            p, m, v, lr, wd = ref[k]
            p = p * (1 - lr * wd)
            m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
            ref[k] = [p - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8), m, v, lr, wd]
    np.testing.assert_allclose(net.a.asnumpy(), ref["a"][0], atol=1e-6)
    np.testing.assert_allclose(net.b.asnumpy(), ref["b"][0], atol=1e-6)


def test_system_weights_loads_parameters_only(tmp_path):
    _, dm, system, trainer = build(tmp_path / "a")
    ckpt = trainer.fit(system, dm, 0, 2)["checkpoint"]
    trained = system.state_arrays()
    _, _, loaded, trainer2 = build(tmp_path / "b", [f"system.weights={ckpt}"])
    for name, value in loaded.state_arrays().items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)
    # weights only: the optimizer starts fresh
    assert int(trainer2.optimizer.global_step.asnumpy().reshape(-1)[0]) == 0
    assert float(np.abs(trainer2.optimizer.moments1[0].asnumpy()).max()) == 0.0


def _step_gradients(system, trainer, batch, seed, guidance_state):
    _seed_globals(seed)
    system.guidance.set_rng_state(guidance_state)
    loss, grads = trainer._grad_fn(batch)
    return float(loss.asnumpy()), [g.asnumpy() for g in grads]


def test_render_backward_in_pieces_matches_one_piece(tmp_path):
    """``system.renderer.grad_chunk_size`` (rays per backward piece, 37 here: uneven pieces) gives
    the loss and parameter gradients of one-piece autodiff, through the whole system step
    (renderer, regularisers, VAE, x0-SDS); the piecewise render keeps nothing taped."""
    _, dm, system, trainer = build(tmp_path)
    system.set_train(True)
    system.set_step(0, 0)
    system.do_update_step(0, 0)
    batch = dm.train_dataset.collate_next(0)
    state = system.guidance.get_rng_state()
    system.renderer.cfg.grad_chunk_size = 0
    loss_one, grads_one = _step_gradients(system, trainer, batch, 3, state)
    system.renderer.cfg.grad_chunk_size = 37
    loss_pieces, grads_pieces = _step_gradients(system, trainer, batch, 3, state)
    assert loss_pieces == pytest.approx(loss_one, rel=1e-6)
    assert any(np.abs(g).max() > 0 for g in grads_one[:2])  # the hash grid and density MLP get gradients
    for one, pieces in zip(grads_one, grads_pieces):
        np.testing.assert_allclose(pieces, one, rtol=1e-4, atol=1e-6 * max(np.abs(one).max(), 1e-12))

"""mvdream-system training: exact resume, torch-AdamW optimizer, loss terms, checkpoint checks."""
from pathlib import Path

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

import system_stubs  # noqa: F401  (registers the stub modules)
import threestudio
from threestudio.systems.optim import TorchAdamW
from threestudio.utils.checkpoint import CheckpointError, load_checkpoint
from threestudio.utils.experiment import checkpoint_config, load_experiment, trainer_config
from threestudio.utils.trainer import Trainer, restore_checkpoint

TINY = Path(__file__).resolve().parents[1] / "MVDream-threestudio" / "configs" / "mvdream-tiny.yaml"
OVERRIDES = [
    "system.prompt_processor.prompt=a cat",
    "data.width=[8,12]", "data.height=[8,12]", "data.resolution_milestones=[4]",
    "data.n_val_views=1", "data.eval_height=8", "data.eval_width=8",
    "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
    "system.renderer.num_samples_per_ray=6",
    "system.loss.lambda_orient=[0,1.,10.,6]", "system.loss.lambda_sparsity=0.5",
    "system.loss.lambda_opaque=0.1", "system.loss.lambda_z_variance=0.2",
]


@pytest.fixture(scope="module")
def stub_cfg_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny-stub.yaml"
    system_stubs.stub_config(TINY, path, force=True)
    return str(path)


def build(path, trial_dir, extra=()):
    cfg, _, _ = load_experiment(path, OVERRIDES + list(extra))
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed)
    dm.setup()
    system = threestudio.find(cfg.system_type)(cfg.system)
    system.set_save_dir(str(Path(trial_dir) / "save"))
    trainer = Trainer(trainer_config(cfg), checkpoint_config(cfg), str(trial_dir))
    trainer.setup_optimization(system)
    return cfg, dm, system, trainer


def test_resume_is_exact(stub_cfg_path, tmp_path):
    np.random.seed(0)
    _, dm, system, trainer = build(stub_cfg_path, tmp_path / "full")
    full = trainer.fit(system, dm, 0, 6)["losses"]
    full_state = system.state_arrays()
    assert (tmp_path / "full/save/it2-val/0.png").is_file() and (tmp_path / "full/ckpts/step6.ckpt").is_file()

    np.random.seed(0)
    _, dm, system, trainer = build(stub_cfg_path, tmp_path / "a")
    first = trainer.fit(system, dm, 0, 3)
    np.random.seed(99)  # a fresh process would start from another global state
    _, dm, system, trainer = build(stub_cfg_path, tmp_path / "b")
    step = restore_checkpoint(first["checkpoint"], *load_checkpoint(first["checkpoint"]), system,
                              trainer.optimizer, trainer.params, dm)
    assert step == 3
    second = trainer.fit(system, dm, step, 6)["losses"]

    np.testing.assert_allclose(first["losses"] + second, full, rtol=1e-6, atol=1e-7)
    assert len(set(np.round(full, 6))) == 6  # a real trace (it changes every step)
    resumed_state = system.state_arrays()
    assert set(resumed_state) == set(full_state) and "renderer.occs" in full_state
    for name, value in full_state.items():
        np.testing.assert_allclose(resumed_state[name], value, atol=1e-6, err_msg=name)
    # checkpoints of the two runs at step 6 hold the same optimizer moments
    a, _ = load_checkpoint(str(tmp_path / "full/ckpts/last.ckpt"))
    b, meta = load_checkpoint(str(tmp_path / "b/ckpts/last.ckpt"))
    assert meta["global_step"] == 6 and not any(k.startswith("state.guidance") for k in b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    rows = (tmp_path / "b/metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 4 and rows[-1].startswith("6,")


def test_checkpoint_of_another_model_is_refused(stub_cfg_path, tmp_path):
    _, dm, system, trainer = build(stub_cfg_path, tmp_path / "a")
    ckpt = trainer.fit(system, dm, 0, 1)["checkpoint"]
    _, dm2, other, trainer2 = build(stub_cfg_path, tmp_path / "b", ["system.renderer.num_samples_per_ray=5"])
    with pytest.raises(CheckpointError, match="system.renderer config differs"):
        restore_checkpoint(ckpt, *load_checkpoint(ckpt), other, trainer2.optimizer, trainer2.params, dm2)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(bad))


def test_loss_terms_match_numpy(stub_cfg_path, tmp_path):
    _, dm, system, _ = build(stub_cfg_path, tmp_path)
    batch = dm.train_dataset.collate_next(0)
    np.random.seed(5)
    system.do_update_step(0, 0)
    loss = float(system.training_loss(batch).asnumpy())
    log = system.train_log
    np.random.seed(5)
    out = {k: v.asnumpy() for k, v in system.renderer(**batch).items()}
    op = out["opacity"]
    cos = np.maximum((out["normal"] * out["t_dirs"]).sum(-1, keepdims=True), 0)
    orient = (out["weights"] * cos ** 2).sum() / (op > 0).sum()
    c = np.clip(op, 1e-3, 1 - 1e-3)
    ref = {"orient": orient, "sparsity": np.sqrt(op ** 2 + 0.01).mean(),
           "opaque": -(c * np.log(c) + (1 - c) * np.log(1 - c)).mean(),
           "z_variance": out["z_variance"][op > 0.5].mean() if (op > 0.5).any() else 0.0}
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


def test_system_weights_loads_parameters_only(stub_cfg_path, tmp_path):
    _, dm, system, trainer = build(stub_cfg_path, tmp_path / "a")
    ckpt = trainer.fit(system, dm, 0, 2)["checkpoint"]
    trained = system.state_arrays()
    _, _, loaded, trainer2 = build(stub_cfg_path, tmp_path / "b", [f"system.weights={ckpt}"])
    for name, value in loaded.state_arrays().items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)
    # weights only: the optimizer starts fresh
    assert int(trainer2.optimizer.global_step.asnumpy().reshape(-1)[0]) == 0
    assert float(np.abs(trainer2.optimizer.moments1[0].asnumpy()).max()) == 0.0

"""``system.scheduler``: threestudio's torch.optim.lr_scheduler configs as an lr factor of the
system's AdamW (closed forms of torch's schedulers; NumPy references)."""
import re

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from launch_helpers import TINY, build_tiny, launch_main
from threestudio.systems.optim import TorchAdamW
from threestudio.systems.scheduler import parse_scheduler
from threestudio.utils.config import ConfigError

# threestudio's configs/latentnerf.yaml schedule (warm-up, then exponential decay)
LATENTNERF = {"name": "SequentialLR", "interval": "step", "warmup_steps": 100, "milestones": [100],
              "schedulers": [{"name": "LinearLR", "args": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 100}},
                             {"name": "ExponentialLR", "args": {"gamma": 0.9995}}]}


def factors(config, steps):
    schedule = parse_scheduler(config)
    return np.float64([float(schedule(Tensor(np.int32([n]))).asnumpy()) for n in steps])


@pytest.mark.parametrize("config, reference", [
    ({"name": "ExponentialLR", "interval": "step", "args": {"gamma": 0.98}}, lambda n: 0.98 ** n),
    ({"name": "LinearLR", "interval": "step", "args": {"start_factor": 0.25, "total_iters": 8}},
     lambda n: 0.25 + 0.75 * min(n, 8) / 8),
    ({"name": "LinearLR", "interval": "step"}, lambda n: 1 / 3 + (2 / 3) * min(n, 5) / 5),  # torch's defaults
    ({"name": "ConstantLR", "interval": "step", "args": {"factor": 0.5, "total_iters": 4}},
     lambda n: 0.5 if n < 4 else 1.0),
    ({"name": "StepLR", "interval": "step", "args": {"step_size": 7, "gamma": 0.5}}, lambda n: 0.5 ** (n // 7)),
    ({"name": "MultiStepLR", "interval": "step", "args": {"milestones": [3, 10], "gamma": 0.1}},
     lambda n: 0.1 ** ((n >= 3) + (n >= 10))),
    (LATENTNERF, lambda n: 0.1 + 0.9 * n / 100 if n < 100 else 0.9995 ** (n - 100)),
    ({"name": "ChainedScheduler", "interval": "step",
      "schedulers": [{"name": "ConstantLR", "args": {"factor": 0.5, "total_iters": 3}},
                     {"name": "ExponentialLR", "args": {"gamma": 0.9}}]},
     lambda n: (0.5 if n < 3 else 1.0) * 0.9 ** n),
    # threestudio's default interval: an epoch never ends with random cameras (the factor at 0)
    ({"name": "ExponentialLR", "args": {"gamma": 0.5}}, lambda n: 1.0),
], ids=["exponential", "linear", "linear-defaults", "constant", "step", "multistep", "latentnerf", "chained",
        "epoch-interval"])
def test_schedule_factors_are_torchs_closed_forms(config, reference):
    steps = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 50, 99, 100, 101, 250]
    np.testing.assert_allclose(factors(config, steps), [reference(n) for n in steps], rtol=2e-6, atol=1e-7)


def test_adamw_follows_the_schedule():
    """Each step's lr is ``lr * factor(finished steps)``; the decoupled decay follows it (torch)."""
    net = nn.Cell()
    net.a = Parameter(Tensor(np.float32([1.0, -2.0, 3.0])), name="a")
    schedule = parse_scheduler({"name": "StepLR", "interval": "step", "args": {"step_size": 2, "gamma": 0.5}})
    opt = TorchAdamW([{"params": [net.a], "lr": 0.1, "weight_decay": 0.05}], beta1=0.9, beta2=0.99, eps=1e-8,
                     schedule=schedule)
    rng = np.random.default_rng(0)
    p, m, v = np.float64([1.0, -2.0, 3.0]), 0.0, 0.0
    for t in range(1, 8):
        g = rng.standard_normal(3).astype(np.float32)
        opt((Tensor(g),))
        lr = 0.1 * 0.5 ** ((t - 1) // 2)
        p = p * (1 - lr * 0.05)
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        p = p - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(net.a.asnumpy(), p, atol=2e-6)


def test_system_trains_with_the_schedule(tmp_path):
    """The tiny system with ``system.scheduler`` from the command line: the optimizer's groups
    follow it (lr 0.01 of geometry.encoding, halved after each step)."""
    overrides = ["system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false",
                 "trainer.val_check_interval=0", "system.scheduler.name=ExponentialLR",
                 "system.scheduler.interval=step", "system.scheduler.args.gamma=0.5"]
    _, dm, system, trainer = build_tiny(tmp_path, overrides)
    trainer.fit(system, dm, 0, 3)
    lr = trainer.optimizer.get_lr_parameter(trainer.params[0])
    step = trainer.optimizer.global_step
    bias = np.sqrt(1 - 0.99 ** 4) / (1 - 0.9 ** 4)  # the next step's (t = 4) bias correction
    assert float(lr(step).asnumpy().reshape(-1)[0]) == pytest.approx(0.01 * 0.5 ** 3 * bias, rel=1e-5)


@pytest.mark.parametrize("scheduler, message", [
    ({"name": "CosineWarmRestarts", "interval": "step"}, "system.scheduler.name 'CosineWarmRestarts' is not supported"),
    ({"name": "ExponentialLR", "interval": "step", "args": {"gama": 0.9}}, "do not fit torch's ExponentialLR"),
    ({"name": "ExponentialLR", "interval": "step", "args": {"gamma": 0}}, "args.gamma must be a number > 0"),
    ({"name": "StepLR", "interval": "step", "args": {"step_size": "ten"}}, "args.step_size must be a number > 0"),
    ({"name": "ExponentialLR", "interval": "iteration", "args": {"gamma": 0.9}}, "interval must be 'step' or 'epoch'"),
    ({"name": "SequentialLR", "interval": "step", "milestones": [],
      "schedulers": [{"name": "ConstantLR"}, {"name": "ExponentialLR", "args": {"gamma": 0.9}}]},
     "SequentialLR needs 1 increasing milestones"),
    ({"interval": "step"}, "system.scheduler needs a 'name'"),
    ({"name": "ExponentialLR", "interval": "step", "args": 0.9}, "system.scheduler.args must be a mapping"),
    ({"name": "LinearLR", "interval": "step", "args": {"end_factor": "one"}}, "an argument has the wrong type"),
])
def test_bad_schedule_is_a_config_error(scheduler, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_scheduler(scheduler)


def test_bad_schedule_fails_launch_with_one_line(tmp_path, capsys):
    code = launch_main(["--config", str(TINY), "--train",
                        "system.prompt_processor.prompt=a cat", f"exp_root_dir={tmp_path}",
                        "system.scheduler.name=Cosine", "system.scheduler.interval=step"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("error: system.scheduler.name 'Cosine' is not supported")
    assert not any(tmp_path.iterdir())  # validated before any work: no trial folder

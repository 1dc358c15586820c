"""Learning-rate schedules from threestudio's ``system.scheduler`` config (``parse_scheduler``).

``system.scheduler`` names torch.optim.lr_scheduler classes, as in threestudio::

    scheduler:
      name: SequentialLR
      interval: step              # step: the factor follows the optimizer steps; epoch: see below
      warmup_steps: 100           # extra keys are free (threestudio configs interpolate them)
      milestones: [${system.scheduler.warmup_steps}]
      schedulers:
        - name: LinearLR
          args: {start_factor: 0.1, end_factor: 1.0, total_iters: ${system.scheduler.warmup_steps}}
        - name: ExponentialLR
          args: {gamma: 0.999}

Supported: ExponentialLR, LinearLR, ConstantLR, StepLR, MultiStepLR, and SequentialLR /
ChainedScheduler of those (torch's arguments and defaults). Each is torch's closed form, a factor
on every group's ``lr`` at ``n`` finished optimizer steps (Lightning steps a ``step``-interval
scheduler after each optimizer step); the optimizer evaluates it from its own step counter, so
a resumed run continues the schedule. ``interval: epoch`` (threestudio's default): the random
camera data never ends an epoch, so the factor stays at its value for n = 0, as under Lightning.
The decoupled weight decay follows the scheduled lr, as torch's AdamW's does.
"""
import math
from typing import Callable, Dict

from mindspore import Tensor, ops
from mindspore import dtype as mstype
from mindspore.nn.learning_rate_schedule import LearningRateSchedule

from ..utils.config import ConfigError, config_to_primitive

Factor = Callable[[Tensor], Tensor]  # n (float32 scalar, finished steps) -> lr factor


def _exponential(gamma):
    return lambda n: ops.exp(n * math.log(gamma))


def _linear(start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
    return lambda n: start_factor + (end_factor - start_factor) * ops.minimum(n, float(total_iters)) / total_iters


def _constant(factor=1.0 / 3, total_iters=5):
    return lambda n: ops.where(n < total_iters, Tensor(factor, mstype.float32), Tensor(1.0, mstype.float32))


def _step(step_size, gamma=0.1):
    return lambda n: ops.exp(ops.floor(n / step_size) * math.log(gamma))


def _multistep(milestones, gamma=0.1):
    def factor(n):
        passed = sum(ops.cast(n >= float(m), mstype.float32) for m in milestones)
        return ops.exp(passed * math.log(gamma))
    return factor


_SCHEDULERS: Dict[str, Callable] = {"ExponentialLR": _exponential, "LinearLR": _linear, "ConstantLR": _constant,
                                    "StepLR": _step, "MultiStepLR": _multistep}
_POSITIVE = {"gamma", "step_size", "total_iters", "start_factor"}


def _is_positive(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _parse(config: dict, where: str) -> Factor:
    if not isinstance(config, dict) or "name" not in config:
        raise ConfigError(f"{where} needs a 'name' (e.g. ExponentialLR)")
    name = config["name"]
    if name in ("SequentialLR", "ChainedScheduler"):
        subs = config.get("schedulers")
        if not subs:
            raise ConfigError(f"{where}.schedulers: {name} needs a list of schedulers")
        factors = [_parse(c, f"{where}.schedulers[{i}]") for i, c in enumerate(subs)]
        if name == "ChainedScheduler":
            def chained(n):
                out = factors[0](n)
                for f in factors[1:]:
                    out = out * f(n)
                return out
            return chained
        milestones = [int(m) for m in config.get("milestones") or []]
        if len(milestones) != len(factors) - 1 or milestones != sorted(milestones):
            raise ConfigError(f"{where}.milestones: SequentialLR needs {len(factors) - 1} increasing "
                              f"milestones for {len(factors)} schedulers, got {milestones}")

        def sequential(n):  # scheduler i runs from milestone i - 1, restarted at 0 there
            out = factors[0](n)
            for m, f in zip(milestones, factors[1:]):
                out = ops.where(n >= m, f(ops.maximum(n - m, 0.0)), out)
            return out
        return sequential
    if name not in _SCHEDULERS:
        raise ConfigError(f"{where}.name '{name}' is not supported; use one of "
                          f"{', '.join(list(_SCHEDULERS) + ['SequentialLR', 'ChainedScheduler'])}")
    args = config.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"{where}.args must be a mapping of torch's {name} arguments, got {args!r}")
    try:
        factor = _SCHEDULERS[name](**args)
    except TypeError:
        raise ConfigError(f"{where}.args {sorted(args)} do not fit torch's {name}; see its arguments") from None
    bad = next((k for k in _POSITIVE if k in args and not _is_positive(args[k])), None)
    if bad is not None:
        raise ConfigError(f"{where}.args.{bad} must be a number > 0, got {args[bad]!r}")
    return factor


class LRFactor(LearningRateSchedule):
    """The schedule's factor at ``global_step`` (the optimizer's count of finished steps)."""

    def __init__(self, factor: Factor, per_step: bool):
        super().__init__()
        self.factor, self.per_step = factor, per_step

    def construct(self, global_step):
        n = ops.cast(global_step, mstype.float32) if self.per_step else Tensor(0.0, mstype.float32)
        return self.factor(ops.reshape(n, ()))


def parse_scheduler(config) -> LRFactor:
    """``system.scheduler`` -> the lr factor schedule (raises ConfigError on a bad config)."""
    config = config_to_primitive(config)
    if not isinstance(config, dict):
        raise ConfigError(f"system.scheduler must be a mapping with a 'name', got {config!r}")
    interval = config.get("interval", "epoch")
    if interval not in ("step", "epoch"):
        raise ConfigError(f"system.scheduler.interval must be 'step' or 'epoch', got {interval!r}")
    schedule = LRFactor(_parse(config, "system.scheduler"), interval == "step")
    try:  # arguments of a wrong type (a string end_factor, ...) fail here, not at the first step
        value = float(schedule(Tensor([1], mstype.int32)).asnumpy().reshape(-1)[0])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"system.scheduler: an argument has the wrong type ({err})") from None
    if not value >= 0:
        raise ConfigError(f"system.scheduler: the lr factor at step 1 is {value}; check its arguments")
    return schedule

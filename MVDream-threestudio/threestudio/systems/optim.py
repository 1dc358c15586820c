"""Optimizers from threestudio's ``system.optimizer`` config (``parse_optimizer``).

``system.optimizer``::

    name: AdamW                 # AdamW or Adam (torch names)
    args: {betas: [0.9, 0.99], eps: 1.e-15, weight_decay: ...}
    params:                     # optional: attribute path -> per-group options (lr, weight_decay)
      geometry.encoding: {lr: 0.01}
      background: {lr: 0.001}

Parameters not named under ``params`` are not optimised (as in threestudio). Without ``params``
every trainable parameter of the system is optimised with ``args.lr``.

``TorchAdamW`` is MindSpore's ``nn.AdamWeightDecay`` (the fused AdamW of ``mint`` has no CPU
kernel) with torch's semantics restored: ``nn.AdamWeightDecay`` has no bias correction, so each
step runs it with ``lr * sqrt(1 - b2^t) / (1 - b1^t)`` and the weight decay divided by the same
factor, so that the decay stays torch's decoupled ``lr * wd * p``. Only eps differs: torch adds
it to ``sqrt(v_hat)``, here to ``sqrt(v)`` (a relative difference below eps / sqrt(v_hat)). Defaults are torch's: AdamW ``weight_decay=0.01`` (the MVDream configs don't
set it, so threestudio runs with 0.01), Adam ``weight_decay=0``.
"""
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.nn.learning_rate_schedule import LearningRateSchedule

from ..utils.config import ConfigError, config_to_primitive

_TORCH_DEFAULTS = {
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
}


class _BiasCorrection(LearningRateSchedule):
    """``value * sqrt(1 - b2^t) / (1 - b1^t)`` (or its inverse) at step ``t = global_step + 1``,
    times ``schedule(global_step)`` where given (``system.scheduler``: the lr only).

    Evaluated inside the optimizer's compiled step from its ``global_step`` Parameter, as a
    dynamic learning rate / weight decay.
    """

    def __init__(self, value: float, beta1: float, beta2: float, inverse: bool = False,
                 schedule: Optional[LearningRateSchedule] = None):
        super().__init__()
        self.value, self.inverse, self.schedule = float(value), inverse, schedule
        self.log_b1, self.log_b2 = math.log(beta1), math.log(beta2)

    def construct(self, global_step):
        t = ops.cast(global_step, mstype.float32) + 1.0
        scale = ops.sqrt(1.0 - ops.exp(t * self.log_b2)) / (1.0 - ops.exp(t * self.log_b1))
        if self.inverse:
            return self.value / scale
        if self.schedule is not None:
            scale = scale * self.schedule(global_step)
        return self.value * scale


class TorchAdamW(nn.AdamWeightDecay):
    """``nn.AdamWeightDecay`` with torch.optim.AdamW's bias correction (see module doc)."""

    def __init__(self, groups, beta1: float, beta2: float, eps: float,
                 schedule: Optional[LearningRateSchedule] = None):
        groups = [dict(g, lr=_BiasCorrection(g["lr"], beta1, beta2, schedule=schedule),
                       weight_decay=_BiasCorrection(g["weight_decay"], beta1, beta2, inverse=True))
                  for g in groups]
        super().__init__(groups, learning_rate=1e-3, beta1=beta1, beta2=beta2, eps=eps)

    # ---- state for checkpoints: moments per parameter name, and the step counter
    def state_arrays(self) -> Dict[str, np.ndarray]:
        state = {"global_step": self.global_step.asnumpy().copy()}
        for p, m, v in zip(self._parameters, self.moments1, self.moments2):
            state[f"m.{p.name}"] = m.asnumpy().copy()
            state[f"v.{p.name}"] = v.asnumpy().copy()
        return state

    def load_state_arrays(self, state: Dict[str, np.ndarray]):
        expected = {"global_step"} | {f"{k}.{p.name}" for p in self._parameters for k in "mv"}
        if set(state) != expected:
            diff = sorted(set(state) ^ expected)
            raise ValueError(f"optimizer state does not match the parameters (e.g. '{diff[0]}')")
        self.global_step.set_data(Tensor(state["global_step"]).astype(self.global_step.dtype))
        for p, m, v in zip(self._parameters, self.moments1, self.moments2):
            m.set_data(Tensor(state[f"m.{p.name}"]).astype(m.dtype))
            v.set_data(Tensor(state[f"v.{p.name}"]).astype(v.dtype))


def _resolve(system, path: str):
    obj = system
    for part in path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"system.optimizer.params: '{path}' does not name a module or parameter of the system")
        obj = getattr(obj, part)
    return obj


def get_parameters(system, path: str) -> List[Parameter]:
    obj = _resolve(system, path)
    if isinstance(obj, nn.Cell):
        return list(obj.trainable_params())
    if isinstance(obj, Parameter):
        return [obj] if obj.requires_grad else []
    return []


def parse_optimizer(config, system, schedule: Optional[LearningRateSchedule] = None
                    ) -> Tuple[TorchAdamW, List[Parameter]]:
    """Build the optimizer; returns it and the list of parameters it updates. ``schedule``: a
    factor on every group's lr at the optimizer's step (``scheduler.parse_scheduler``)."""
    config = config_to_primitive(config) or {}
    name = config.get("name", "AdamW")
    if name not in _TORCH_DEFAULTS:
        raise ConfigError(f"system.optimizer.name '{name}' is not supported; use one of {', '.join(_TORCH_DEFAULTS)}")
    unknown = set(config) - {"name", "args", "params"}
    if unknown:
        raise ConfigError(f"unknown config key 'system.optimizer.{sorted(unknown)[0]}'")
    args = {**_TORCH_DEFAULTS[name], **(config.get("args") or {})}
    unknown = set(args) - set(_TORCH_DEFAULTS[name]) - {"amsgrad", "foreach", "fused", "capturable"}
    if unknown:
        raise ConfigError(f"unknown config key 'system.optimizer.args.{sorted(unknown)[0]}'")
    if args.get("amsgrad"):
        raise ConfigError("system.optimizer.args.amsgrad=true is not supported")

    groups, seen = [], set()
    if config.get("params"):
        for path, opts in config["params"].items():
            opts = dict(opts or {})
            bad = set(opts) - {"lr", "weight_decay"}
            if bad:
                raise ConfigError(f"unknown config key 'system.optimizer.params.{path}.{sorted(bad)[0]}'")
            params = [p for p in get_parameters(system, path) if id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr": float(opts.get("lr", args["lr"])),
                               "weight_decay": float(opts.get("weight_decay", args["weight_decay"]))})
    else:
        params = [p for p in system.trainable_params() if not p.name.startswith(("guidance.", "prompt_processor."))]
        groups.append({"params": params, "lr": float(args["lr"]), "weight_decay": float(args["weight_decay"])})
    if not any(g["params"] for g in groups):
        raise ConfigError("system.optimizer selects no trainable parameters")
    beta1, beta2 = (float(b) for b in args["betas"])
    optimizer = TorchAdamW(groups, beta1=beta1, beta2=beta2, eps=float(args["eps"]), schedule=schedule)
    return optimizer, [p for g in groups for p in g["params"]]

"""Systems: the model being optimised plus its losses (threestudio ``systems/base.py``).

A system is an ``nn.Cell`` driven by ``threestudio.utils.trainer.Trainer`` (which replaces
pytorch-lightning): ``training_loss(batch)`` returns the scalar loss (differentiated with
``mindspore.value_and_grad`` w.r.t. the optimizer's parameters), ``validation_step`` /
``test_step`` render and save images. ``true_global_step`` is set by the trainer.

State handled here for checkpoints:
  * ``state_arrays()`` / ``load_state_arrays()``: every Parameter (trainable or not, e.g. the
    occupancy grid) of the modules in ``STATE_MODULES``, keyed by attribute path;
  * ``rng_states()`` / ``set_rng_states()``: NumPy's and Python's global generators and the
    state of every component that has ``get_rng_state()`` / ``set_rng_state()`` (the guidance).
    MindSpore's own random ops cannot be replayed on CPU, so components that must resume exactly
    draw from NumPy or keep their own generator;
  * ``fingerprint_sections()``: the config that defines the shape of that state.
"""
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
from mindspore import Tensor, nn

import threestudio

from ..utils.base import Updateable
from ..utils.checkpoint import CheckpointError, load_checkpoint
from ..utils.config import ConfigError, config_to_primitive, log_ignored_keys
from ..utils.misc import C
from ..utils.saving import SaverMixin
from .optim import parse_optimizer
from .scheduler import parse_scheduler

logger = logging.getLogger("threestudio")


def assign_state_arrays(params: Dict[str, Any], arrays: Dict[str, np.ndarray], source: str = "checkpoint",
                        ignore_modules: Optional[List[str]] = None):
    """Set ``params`` (name -> Parameter) from ``arrays``: the same names (outside the ignored
    ``<module>.`` prefixes) and shapes, or a one-line CheckpointError naming the first mismatch."""
    ignore = tuple(f"{m}." for m in (ignore_modules or []))
    wanted = {k for k in params if not k.startswith(ignore)}
    missing = sorted(wanted - set(arrays))
    unexpected = sorted(k for k in set(arrays) - set(params) if not k.startswith(ignore))
    if missing or unexpected:
        what = f"lacks '{missing[0]}'" if missing else f"has an unknown entry '{unexpected[0]}'"
        raise CheckpointError(f"{source} does not fit this model: it {what}")
    for name in sorted(wanted):
        param, value = params[name], arrays[name]
        if tuple(param.shape) != tuple(value.shape):
            raise CheckpointError(f"{source} does not fit this model: '{name}' has shape "
                                  f"{tuple(value.shape)}, the model {tuple(param.shape)}")
        param.set_data(Tensor(np.ascontiguousarray(value)).astype(param.dtype))


class BaseSystem(nn.Cell, Updateable, SaverMixin):
    @dataclass
    class Config:
        loggers: dict = field(default_factory=dict)
        loss: dict = field(default_factory=dict)
        optimizer: dict = field(default_factory=dict)
        scheduler: Optional[dict] = None
        weights: Optional[str] = None
        weights_ignore_modules: Optional[List[str]] = None
        cleanup_after_validation_step: bool = False
        cleanup_after_test_step: bool = False

    cfg: Config
    # modules whose parameters make up the trained state (guidance and prompt are frozen inputs)
    STATE_MODULES = ()
    # components that may own random generators (get_rng_state / set_rng_state)
    RNG_COMPONENTS = ()

    def __init__(self, cfg, resumed: bool = False, precision: Any = 32, eval_only: bool = False):
        super().__init__()
        # eval_only (--test / --export): render and export only; systems skip their guidance
        # and prompt processor (large frozen models that only the training loss needs)
        self.eval_only = eval_only
        from ..utils.config import parse_structured

        self.cfg = parse_structured(self.Config, cfg, prefix="system")
        self.resumed = resumed
        self.precision = precision  # trainer.precision, for the modules that depend on it
        self.true_global_step = 0
        self.true_current_epoch = 0
        # parsed here so that a bad schedule fails before configure() builds the models
        self.lr_schedule = None if self.cfg.scheduler is None else parse_scheduler(self.cfg.scheduler)
        log_ignored_keys(self.cfg, ("loggers", "cleanup_after_validation_step", "cleanup_after_test_step"), "system")
        self.configure()
        if self.cfg.weights is not None:
            self.load_weights(self.cfg.weights, self.cfg.weights_ignore_modules)
        self.post_configure()

    def configure(self):
        pass

    def post_configure(self):
        """Runs after ``system.weights`` are loaded."""

    def C(self, value) -> float:
        return C(value, self.true_current_epoch, self.true_global_step)

    def set_step(self, epoch: int, global_step: int):
        self.true_current_epoch, self.true_global_step = epoch, global_step

    def configure_optimizers(self):
        """(optimizer, parameters it updates) from ``system.optimizer`` and ``system.scheduler``."""
        return parse_optimizer(self.cfg.optimizer, self, self.lr_schedule)

    # ------------------------------------------------------------ hooks used by the trainer
    def training_loss(self, batch: Dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def validation_step(self, batch: Dict[str, Any], batch_idx: int):
        raise NotImplementedError

    def test_step(self, batch: Dict[str, Any], batch_idx: int):
        raise NotImplementedError

    def on_test_epoch_end(self, **kwargs):
        pass

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        pass

    def _updateable_children(self):
        # the guidance is not a Cell child in all cases (and the prompt processor never is)
        children = [getattr(self, n, None) for n in self.STATE_MODULES + self.RNG_COMPONENTS]
        return [c for c in dict.fromkeys(children) if isinstance(c, Updateable)]

    # ------------------------------------------------------------ state for checkpoints
    def named_state_parameters(self):
        """(name, Parameter) of the trained state, each Parameter once, by attribute path."""
        seen = set()
        for module_name in self.STATE_MODULES:
            module = getattr(self, module_name, None)
            if module is None:
                continue
            for name, param in module.parameters_and_names():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield f"{module_name}.{name}", param

    def state_arrays(self) -> Dict[str, np.ndarray]:
        return {name: p.asnumpy().copy() for name, p in self.named_state_parameters()}

    def load_state_arrays(self, arrays: Dict[str, np.ndarray], source: str = "checkpoint",
                          ignore_modules: Optional[List[str]] = None):
        assign_state_arrays(dict(self.named_state_parameters()), arrays, source, ignore_modules)

    def load_weights(self, path: str, ignore_modules: Optional[List[str]] = None):
        """``system.weights``: parameters only (no optimizer state, step or RNG), as in threestudio."""
        arrays, meta = load_checkpoint(path)
        state = {k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")}
        self.load_state_arrays(state, source=path, ignore_modules=ignore_modules)
        # restore step-dependent states (schedules) of the loaded modules
        self.do_update_step(int(meta.get("epoch", 0)), int(meta.get("global_step", 0)), on_load_weights=True)
        logger.info("loaded weights from %s (step %s)", path, meta.get("global_step"))

    def rng_states(self) -> Dict[str, Any]:
        states = {"numpy": np.random.get_state(), "python": random.getstate()}
        for name in self.STATE_MODULES + self.RNG_COMPONENTS:
            component = getattr(self, name, None)
            if hasattr(component, "get_rng_state"):
                states[name] = component.get_rng_state()
        return states

    def set_rng_states(self, states: Dict[str, Any]):
        np.random.set_state(tuple(states["numpy"]))
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
        for name in self.STATE_MODULES + self.RNG_COMPONENTS:
            component = getattr(self, name, None)
            if hasattr(component, "set_rng_state") and name in states:
                component.set_rng_state(states[name])

    def fingerprint_sections(self) -> Dict[str, Any]:
        return {}


class BaseLift3DSystem(BaseSystem):
    @dataclass
    class Config(BaseSystem.Config):
        geometry_type: str = ""
        geometry: dict = field(default_factory=dict)
        geometry_convert_from: Optional[str] = None
        geometry_convert_inherit_texture: bool = False
        geometry_convert_override: dict = field(default_factory=dict)

        material_type: str = ""
        material: dict = field(default_factory=dict)

        background_type: str = ""
        background: dict = field(default_factory=dict)

        renderer_type: str = ""
        renderer: dict = field(default_factory=dict)

        guidance_type: str = ""
        guidance: dict = field(default_factory=dict)

        prompt_processor_type: str = ""
        prompt_processor: dict = field(default_factory=dict)

        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)

    cfg: Config
    STATE_MODULES = ("geometry", "material", "background", "renderer")

    def configure(self):
        if self.cfg.geometry_convert_from:
            raise ConfigError("system.geometry_convert_from is not supported yet")
        self.geometry = threestudio.find(self.cfg.geometry_type)(self.cfg.geometry)
        self.material = threestudio.find(self.cfg.material_type)(self.cfg.material)
        self.background = threestudio.find(self.cfg.background_type)(self.cfg.background)
        self.renderer = threestudio.find(self.cfg.renderer_type)(
            self.cfg.renderer, geometry=self.geometry, material=self.material, background=self.background)

    def fingerprint_sections(self) -> Dict[str, Any]:
        return self.config_fingerprint_sections(self.cfg)

    @classmethod
    def config_fingerprint_sections(cls, cfg: "BaseLift3DSystem.Config") -> Dict[str, Any]:
        """The sections from the parsed system config alone (e.g. to check a checkpoint
        before building any module)."""
        sections = {name: [getattr(cfg, f"{name}_type"), config_to_primitive(getattr(cfg, name))]
                    for name in cls.STATE_MODULES}
        # isosurface_* only steer mesh export (e.g. --export with another resolution), and the
        # hash grid's backend only how it is computed (every backend gives the same values)
        geometry = sections["geometry"][1]
        if isinstance(geometry, dict):
            geometry = {k: v for k, v in geometry.items() if not str(k).startswith("isosurface")}
            if isinstance(geometry.get("pos_encoding_config"), dict):
                geometry["pos_encoding_config"] = {k: v for k, v in geometry["pos_encoding_config"].items()
                                                   if k != "backend"}
            sections["geometry"][1] = geometry
        optimizer = config_to_primitive(cfg.optimizer) or {}
        sections["optimizer"] = [optimizer.get("name", "AdamW"), sorted((optimizer.get("params") or {}).keys())]
        return sections

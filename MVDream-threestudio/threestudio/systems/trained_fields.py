"""The trained geometry and material of a checkpoint, without the rest of the system (no
guidance, no prompt processor): what mesh export needs (``launch.py --export``,
``extract_color_mesh.py``)."""
from dataclasses import dataclass

import threestudio

from ..utils.checkpoint import check_fingerprint, fingerprint, load_checkpoint
from ..utils.config import parse_structured
from .base import assign_state_arrays


@dataclass
class TrainedFields:
    geometry: object
    material: object
    global_step: int
    epoch: int
    system_cfg: object  # the parsed system config


def load_trained_fields(ckpt_path: str, system_type: str, system_cfg) -> TrainedFields:
    """Geometry and material of a system config, loaded from a training checkpoint. Refuses a
    checkpoint whose geometry or material config differs from ``system_cfg``'s."""
    arrays, meta = load_checkpoint(ckpt_path)
    system_cls = threestudio.find(system_type)
    scfg = parse_structured(system_cls.Config, system_cfg)
    sections = {k: v for k, v in system_cls.config_fingerprint_sections(scfg).items()
                if k in ("geometry", "material")}
    stored = meta.get("fingerprint", {})
    check_fingerprint(ckpt_path, {"fingerprint": {k: stored.get(k) for k in sections}}, fingerprint(sections))
    geometry = threestudio.find(scfg.geometry_type)(scfg.geometry)
    material = threestudio.find(scfg.material_type)(scfg.material)
    for name, module in (("geometry", geometry), ("material", material)):
        prefix = f"state.{name}."
        assign_state_arrays({n: p for n, p in module.parameters_and_names()},
                            {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                            source=ckpt_path)
    step, epoch = int(meta.get("global_step", 0)), int(meta.get("epoch", 0))
    for module in (geometry, material):  # step-dependent state, e.g. the annealed blob std
        module.do_update_step(epoch, step, on_load_weights=True)
    return TrainedFields(geometry, material, step, epoch, scfg)


def build_exporter(fields: TrainedFields, overrides=None):
    """``system.exporter_type`` configured by ``system.exporter`` (then ``overrides``, a dict),
    on the loaded geometry and material. Validates the options (before any work)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.create(fields.system_cfg.exporter or {}), overrides or {})
    return threestudio.find(fields.system_cfg.exporter_type)(cfg, geometry=fields.geometry,
                                                             material=fields.material)

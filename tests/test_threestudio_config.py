"""Registry, dataclass configs and scheduled values."""
from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

import threestudio
from threestudio.utils.base import BaseObject
from threestudio.utils.config import ConfigError, load_config, parse_structured
from threestudio.utils.misc import C


@dataclass
class _Cfg:
    lr: float = 0.01
    n_view: int = 4


def test_parse_structured_rejects_unknown_key():
    assert parse_structured(_Cfg, {"lr": 0.5}).lr == 0.5
    with pytest.raises(ConfigError, match="unknown config key 'nview'.*_Cfg"):
        parse_structured(_Cfg, {"nview": 8})


def test_parse_structured_rejects_missing_values():
    """``???`` must not silently become the dataclass default (OmegaConf's merge keeps it)."""
    @dataclass
    class _Outer:
        lr: float = 0.01
        sub: dict = field(default_factory=dict)

    with pytest.raises(ConfigError) as err:
        parse_structured(_Cfg, OmegaConf.create({"lr": "???"}))
    assert str(err.value) == "'lr' is missing (???) in the config of _Cfg"
    with pytest.raises(ConfigError) as err:  # nested, with the position in the experiment config
        parse_structured(_Outer, {"sub": {"prompt": "???"}}, prefix="system")
    assert str(err.value) == ('system.sub.prompt is missing; set it on the command line: '
                              'system.sub.prompt="a cat"')
    assert parse_structured(_Outer, {"sub": {"prompt": "a"}}, prefix="system").sub == {"prompt": "a"}


def test_registry_find_and_unknown_name():
    @threestudio.register("test-only-object")
    class _Obj(BaseObject):
        Config = _Cfg

    assert threestudio.find("test-only-object") is _Obj
    assert _Obj({"n_view": 2}).cfg.n_view == 2
    with pytest.raises(KeyError, match="unknown threestudio module 'nope'"):
        threestudio.find("nope")


def test_scheduled_values():
    assert C(3.0, 0, 100) == 3.0
    assert C([0, 0.98, 0.5, 100], 0, 50) == pytest.approx(0.74)
    assert C([0.98, 0.5, 100], 0, 500) == pytest.approx(0.5)
    assert C([100, 1.0, 0.0, 200], 0, 0) == pytest.approx(1.0)


def test_load_config_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb:\n  c: x\n")
    cfg = load_config(str(path), cli_args=["b.c=y", "a=2"])
    assert cfg.a == 2 and cfg.b.c == "y"
    with pytest.raises(ConfigError, match="key=value"):
        load_config(str(path), cli_args=["oops"])

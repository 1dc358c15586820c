"""``FrozenOpenCLIPEmbedder(arch=...)`` also takes the path of an open_clip model json, so a model
config can bring its own text-tower sizes; a missing or unusable file is a one-line error."""
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from launch_helpers import TINY, launch_main
from mvdream import model_zoo
from mvdream.checkpoint import load_state_dict_into
from mvdream.errors import ModelConfigError, user_facing_errors
from mvdream.ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder

JSON_NAME = "mvdream-tiny-openclip.json"  # a real open_clip model json (the tiny parity tower)


def _model_yaml(tmp_path, arch) -> str:
    """mvdream/configs/tiny.yaml with the text tower's ``arch`` replaced."""
    cfg = OmegaConf.load(model_zoo.get_config_file("tiny.yaml"))
    cfg.model.params.cond_stage_config.params.arch = str(arch)
    path = tmp_path / "model.yaml"
    OmegaConf.save(cfg, path)
    return str(path)


def test_json_path_builds_the_parity_tower(parity_dir, tiny_state_dict):
    """The json by path gives the packaged tower, parameter for parameter, and with the tiny
    checkpoint's weights it reproduces the original PyTorch embeddings."""
    by_path = FrozenOpenCLIPEmbedder(arch=str(parity_dir / JSON_NAME), version=None, layer="penultimate")
    by_name = FrozenOpenCLIPEmbedder(arch="mvdream-tiny-openclip", version=None, layer="penultimate")
    shapes = lambda e: {n: p.shape for n, p in e.parameters_and_names()}  # noqa: E731
    assert shapes(by_path) == shapes(by_name)
    load_state_dict_into(by_path.model, tiny_state_dict, prefix="cond_stage_model.model.", strict=True)
    golden = np.load(parity_dir / "clip_tiny.npz")["z_penultimate"]
    prompts = json.loads((parity_dir / "clip_prompts.json").read_text(encoding="utf-8"))
    z = by_path(prompts).asnumpy()
    assert z.shape == golden.shape
    assert np.abs(z - golden).max() / np.abs(golden).max() <= 1e-5


def test_model_config_with_json_arch_uses_its_sizes(tmp_path, parity_dir):
    """A model YAML whose cond_stage arch is a json path builds the text tower of that file."""
    arch = json.loads((parity_dir / JSON_NAME).read_text())
    arch["text_cfg"].update(width=48, heads=3, layers=2)
    (tmp_path / "tower.json").write_text(json.dumps(arch))
    model = model_zoo.build_model(None, config_path=_model_yaml(tmp_path, tmp_path / "tower.json"), pretrained=False)
    tower = model.cond_stage_model.model
    assert (tower.width, tower.transformer.layers, len(tower.transformer.resblocks)) == (48, 2, 2)
    assert tower.transformer.resblocks[0].attn.num_heads == 3
    assert tower.text_projection.shape == (48, arch["embed_dim"])
    assert model.cond_stage_model(["a cat"]).shape == (1, 77, 48)


BAD_FILES = [
    ("{ not json", "not a readable open_clip model json"),
    ("[1, 2]", "an open_clip model json needs a 'text_cfg' object"),
    ('{"text_cfg": {"width": 64, "heads": 4}}', "'embed_dim' must be a positive integer, got None"),
    ('{"embed_dim": 32, "text_cfg": {"width": "64"}}', "text_cfg.width must be a positive integer, got '64'"),
    ('{"embed_dim": 32, "text_cfg": {"width": 64, "heads": 5}}', "text_cfg.width must be a multiple of text_cfg.heads"),
    ('{"embed_dim": 32, "text_cfg": {"hf_model_name": "roberta-base"}}', "HuggingFace text towers are not supported"),
    ('{"embed_dim": 32, "text_cfg": {"widht": 64}}', "unsupported text_cfg options: ['widht']"),
]


@pytest.mark.parametrize("text, expected", BAD_FILES)
def test_unusable_json_is_one_line_error(tmp_path, text, expected):
    path = tmp_path / "tower.json"
    path.write_text(text)
    with pytest.raises(ModelConfigError) as err:
        FrozenOpenCLIPEmbedder(arch=str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
    assert isinstance(err.value, user_facing_errors())  # scripts/t2i.py prints it as one line


def test_missing_json_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json: OpenCLIP model config not found") as err:
        FrozenOpenCLIPEmbedder(arch=str(tmp_path / "nope.json"))
    assert "\n" not in str(err.value) and "mvdream-tiny-openclip" in str(err.value)
    with pytest.raises(ValueError, match="unknown OpenCLIP architecture 'ViT-Q-99'.*path of an open_clip model json"):
        FrozenOpenCLIPEmbedder(arch="ViT-Q-99")  # a bare name is still looked up in the package


@pytest.mark.parametrize("content, expected", [
    (None, "towers/missing.json: OpenCLIP model config not found"),
    ("{ not json", "towers/missing.json: not a readable open_clip model json"),
])
def test_launch_reports_bad_arch_json_in_one_line(tmp_path, monkeypatch, capsys, content, expected):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "towers").mkdir()
        (tmp_path / "towers" / "missing.json").write_text(content)
    model_yaml = _model_yaml(tmp_path, "towers/missing.json")  # relative to the working directory
    code = launch_main(["--config", str(TINY), "--train", "system.prompt_processor.prompt=a cat",
                        f"system.guidance.config_path={model_yaml}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: ") and expected in err[-1], err
    assert not (tmp_path / "outputs").exists()

"""``dir_encoding_config`` and checkpoints, on the real tiny config: the default (option off)
trains exactly as main did before the option existed, main's checkpoints still load, and a
checkpoint trained with the option is refused by a config without it, in one line."""
import json
from pathlib import Path

import numpy as np
import pytest

from launch_helpers import build_tiny
from threestudio.utils.checkpoint import CheckpointError, load_checkpoint
from threestudio.utils.trainer import restore_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "viewdep"
OVERRIDES = [
    "system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false",
    "data.width=[8,12]", "data.height=[8,12]", "data.resolution_milestones=[6]",
    "data.n_val_views=1", "data.eval_height=8", "data.eval_width=8", "trainer.val_check_interval=100",
    "system.renderer.num_samples_per_ray=16",
    "system.renderer.grid_update_interval=3", "system.renderer.grid_warmup_steps=2",
    "system.guidance.min_step_percent=[0,0.98,0.02,8]", "system.guidance.max_step_percent=[0,0.98,0.5,8]",
]
VIEWDEP = "system.geometry.dir_encoding_config={otype: SphericalHarmonics, degree: 4}"
N = 4


def build(trial_dir, extra=()):
    return build_tiny(trial_dir, OVERRIDES + list(extra))


def main_trace():
    """Losses of 2N steps written by main before the option (make_main_trace.py)."""
    return json.loads((FIXTURES / "main_trace.json").read_text())["losses"]


def test_default_config_trains_as_main_did(tmp_path):
    _, dm, system, trainer = build(tmp_path / "a")
    assert system.geometry.dir_encoding is None
    losses = trainer.fit(system, dm, 0, 2 * N)["losses"]
    print("bit-for-bit equal to main's trace:", losses == main_trace())
    np.testing.assert_allclose(losses, main_trace(), rtol=1e-6)


def test_checkpoint_of_main_resumes_with_the_option_off(tmp_path):
    _, dm, system, trainer = build(tmp_path / "a")
    ckpt = str(FIXTURES / "main_step4.ckpt")
    step = restore_checkpoint(ckpt, *load_checkpoint(ckpt), system, trainer.optimizer, trainer.params, dm)
    assert step == N
    np.testing.assert_allclose(trainer.fit(system, dm, N, 2 * N)["losses"], main_trace()[N:], rtol=1e-6)


def test_viewdep_checkpoint_is_refused_without_the_option(tmp_path):
    _, dm, system, trainer = build(tmp_path / "a", [VIEWDEP])
    # the feature network also takes the 16 SH values of the view direction
    assert system.geometry.feature_network.layers[0].weight.shape == (64, 4 * 2 + 16)
    ckpt = trainer.fit(system, dm, 0, 1)["checkpoint"]
    _, dm, plain, trainer = build(tmp_path / "b")
    with pytest.raises(CheckpointError) as err:
        restore_checkpoint(ckpt, *load_checkpoint(ckpt), plain, trainer.optimizer, trainer.params, dm)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith("its system.geometry config differs from this run's (geometry.dir_encoding_config: "
                            '{"otype": "SphericalHarmonics", "degree": 4} in the checkpoint, not set here)'), message
    # parameters only (system.weights): refused on the feature network's input width
    with pytest.raises(CheckpointError, match=r"geometry.feature_network.layers.0.weight' has shape \(64, 24\), "
                                              r"the model \(64, 8\)"):
        plain.load_weights(ckpt)

"""The tiny config's training step with fp16 guidance (trainer.precision=16-mixed) and with the
guidance's VAE encoder recomputed in the backward pass (system.use_recompute=true).

The guidance loads the PyTorch parity checkpoint of the tiny model: with the config's random
initialisation the UNet's zero-initialised output convolution makes every noise prediction 0
(whatever the precision), which would hide what fp16 changes."""
import numpy as np
import pytest
import mindspore as ms

from conftest import PARITY
from launch_helpers import build_tiny

OVERRIDES = ["system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false",
             "data.width=[16,16]", "data.height=[16,16]", "system.renderer.num_samples_per_ray=16",
             "system.guidance.pretrained=true", f"system.guidance.ckpt_path={PARITY / 'tiny_mvdream.pt'}"]


def _one_step(tmp_path, extra=()):
    """Loss of the first training step and the parameters after it."""
    _, dm, system, trainer = build_tiny(tmp_path, OVERRIDES + list(extra))
    system.set_train(True)
    system.do_update_step(0, 0)
    loss = trainer.train_step(system, dm.train_dataset.collate_next(0))
    return loss, system.state_arrays(), system


@pytest.fixture(scope="module")
def fp32_step(tmp_path_factory):
    return _one_step(tmp_path_factory.mktemp("fp32"))


def test_fp16_mixed_step(tmp_path, fp32_step):
    loss, state, system = _one_step(tmp_path, ["trainer.precision=16-mixed"])
    assert system.guidance.model.compute_dtype == ms.float16
    ref_loss, ref_state, ref_system = fp32_step
    assert ref_system.guidance.model.compute_dtype == ms.float32
    assert np.isfinite(loss) and all(np.isfinite(v).all() for v in state.values())
    # same draws, same scene: fp16 changes the numbers a little, not the step
    assert loss == pytest.approx(ref_loss, rel=0.05) and loss != ref_loss
    delta = state["geometry.encoding.encoding.params"] - ref_state["geometry.encoding.encoding.params"]
    assert np.abs(delta).max() > 0


def test_recompute_step_is_the_same_step(tmp_path, fp32_step):
    loss, state, system = _one_step(tmp_path, ["system.use_recompute=true"])
    ref_loss, ref_state, _ = fp32_step
    assert np.isfinite(loss) and loss == pytest.approx(ref_loss, rel=1e-6)
    for name, value in ref_state.items():
        np.testing.assert_allclose(state[name], value, rtol=1e-5, atol=1e-7, err_msg=name)

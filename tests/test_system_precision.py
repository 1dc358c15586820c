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


def test_bench_train_tiny(capsys):
    """tools/bench_train.py end to end on the tiny config: both stages, a consistent split."""
    import bench_train  # tools/ is on sys.path (conftest)

    rows = bench_train.main(["--tiny", "--iters", "1", "--warmup", "0", "--precision", "fp32"])
    assert [(r["render"], r["batch"]) for r in rows] == [("8x8", 8), ("16x16", 4)]
    for r in rows:
        parts = [r[k] for k in ("render_s", "vae_encode_s", "unet_s", "other_forward_s", "backward_s", "optimizer_s")]
        assert min(parts) >= 0 and r["render_s"] > 0 and r["unet_s"] > 0
        assert sum(parts) == pytest.approx(r["total_s"], abs=0.01)
        assert r["samples_per_ray"] > 0 and r["peak_rss_gb"] > 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2

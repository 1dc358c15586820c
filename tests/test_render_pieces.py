"""The training render in pieces (``system.renderer.grad_chunk_size`` smaller than the batch)
gives the outputs, loss and parameter gradients of one-piece autodiff, with every loss term of
the system, on the shading recipe (diffuse point-light material, analytic normals)."""
import random

import mindspore as ms
import numpy as np
import pytest
from omegaconf import OmegaConf

from launch_helpers import TINY, build_tiny

OVERRIDES = [
    "system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false",
    "data.width=[8,8]", "data.height=[8,8]", "data.n_val_views=1",
    "system.renderer.num_samples_per_ray=16",
    "system.loss.lambda_orient=10.", "system.loss.lambda_sparsity=0.5",
    "system.loss.lambda_opaque=0.1", "system.loss.lambda_z_variance=0.2",
]


def shading_config(tmp_path):
    """The tiny config with the shading recipe's geometry and material (mvdream-sd21-shading.yaml),
    past its ambient-only steps and always in ``diffuse`` shading, so colours use the normals."""
    cfg = OmegaConf.load(TINY)
    cfg.system.geometry.normal_type = "analytic"
    cfg.system.material_type = "diffuse-with-point-light-material"
    cfg.system.material = {"ambient_only_steps": 0, "diffuse_prob": 1.0, "textureless_prob": 0.0,
                           "ambient_light_color": [0.3, 0.3, 0.3], "diffuse_light_color": [0.7, 0.7, 0.7],
                           "soft_shading": True, "albedo_activation": "sigmoid"}
    path = tmp_path / "shading-tiny.yaml"
    OmegaConf.save(cfg, path)
    return path


def _seeded_step(system, params, batch, guidance_state, grad_chunk_size):
    """(loss, gradients, renderer outputs) of one training loss from the same random state."""
    system.renderer.cfg.grad_chunk_size = grad_chunk_size
    np.random.seed(3)
    random.seed(3)
    system.guidance.set_rng_state(guidance_state)
    loss, grads = ms.value_and_grad(system.training_loss, None, params)(batch)
    np.random.seed(3)
    random.seed(3)
    out = system.renderer(**batch)
    return float(loss.asnumpy()), [g.asnumpy() for g in grads], dict(system.train_log), out


def test_shading_render_in_pieces_matches_one_piece(tmp_path):
    _, dm, system, _ = build_tiny(tmp_path, OVERRIDES, config=shading_config(tmp_path))
    _, params = system.configure_optimizers()
    system.set_train(True)
    system.set_step(0, 0)
    system.do_update_step(0, 0)
    batch = dm.train_dataset.collate_next(0)
    n_rays = 4 * 8 * 8
    state = system.guidance.get_rng_state()

    loss_one, grads_one, log_one, out_one = _seeded_step(system, params, batch, state, 0)
    loss_pieces, grads_pieces, log_pieces, out_pieces = _seeded_step(system, params, batch, state, 100)
    assert 100 < n_rays

    # every regulariser is active and non-trivial, and equal in both modes
    for term in ("sds", "orient", "sparsity", "opaque", "z_variance"):
        assert log_one[f"train/loss_{term}"] > 0, term
        assert log_pieces[f"train/loss_{term}"] == pytest.approx(log_one[f"train/loss_{term}"], rel=1e-5), term
    assert loss_pieces == pytest.approx(loss_one, rel=1e-5)

    # the same output keys (a memory option never changes what the renderer returns)
    assert sorted(out_pieces) == sorted(out_one)
    for key in ("comp_rgb", "opacity", "depth", "z_variance"):
        np.testing.assert_allclose(out_pieces[key].asnumpy(), out_one[key].asnumpy(), rtol=1e-5, atol=1e-6)

    names = [p.name for p in params]
    assert any(np.abs(g).max() > 0 for g in grads_one)
    for name, one, pieces in zip(names, grads_one, grads_pieces):
        scale = max(float(np.abs(one).max()), 1e-12)
        np.testing.assert_allclose(pieces, one, rtol=1e-5, atol=1e-5 * scale, err_msg=name)

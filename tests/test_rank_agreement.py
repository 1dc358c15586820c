"""Data-parallel ranks act together: the trainer's non-finite guard and its SIGINT/SIGTERM stop
decide on what the gradient reducer returns (the mean over ranks and any rank's signal flag),
and only the writer rank writes checkpoints. The other rank is simulated by the reducer."""
import math
import signal

import pytest

from launch_helpers import build_tiny
from threestudio.utils.trainer import NonFiniteError, TrainingInterrupted

OVERRIDES = ["system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false",
             "data.width=[8,8]", "data.height=[8,8]", "data.resolution_milestones=[100]", "trainer.val_check_interval=100",
             "system.renderer.num_samples_per_ray=16", "checkpoint.every_n_train_steps=100"]


class OtherRank:
    """Reducer of 2 ranks whose other rank has the same loss and gradients, except that at call
    ``nan_at`` its loss is NaN and from call ``signal_at`` on it has a pending signal."""

    def __init__(self, nan_at=None, signal_at=None):
        self.calls, self.nan_at, self.signal_at = 0, nan_at, signal_at
        self.seen = []

    def __call__(self, loss, grads, signalled=False):
        self.calls += 1
        self.seen.append(signalled)
        if self.calls == self.nan_at:
            loss = loss * math.nan  # mean of a finite and a NaN loss
        other = self.signal_at is not None and self.calls >= self.signal_at
        return loss, grads, signalled or other


def _trainer(tmp_path, reducer, writer, extra=()):
    _, dm, system, trainer = build_tiny(tmp_path, OVERRIDES + list(extra))
    trainer.grad_reducer, trainer.writer = reducer, writer
    return dm, system, trainer


@pytest.mark.parametrize("writer", [True, False])
def test_a_signal_on_another_rank_stops_every_rank_at_the_same_step(tmp_path, writer):
    reducer = OtherRank(signal_at=2)
    dm, system, trainer = _trainer(tmp_path, reducer, writer)
    with pytest.raises(TrainingInterrupted) as err:
        trainer.fit(system, dm, 0, 5)
    assert err.value.step == 2 and err.value.signum == signal.SIGTERM
    assert reducer.seen == [False, False]  # this rank had no signal of its own
    ckpts = sorted(p.name for p in (tmp_path / "ckpts").glob("*")) if (tmp_path / "ckpts").exists() else []
    if writer:
        assert ckpts == ["last.ckpt"] and err.value.checkpoint == str(tmp_path / "ckpts" / "last.ckpt")
    else:  # only the writer rank writes
        assert ckpts == [] and err.value.checkpoint is None
        assert not (tmp_path / "metrics.csv").exists()


def test_a_nonfinite_mean_loss_stops_a_rank_whose_own_loss_is_finite(tmp_path):
    dm, system, trainer = _trainer(tmp_path, OtherRank(nan_at=2), True)
    with pytest.raises(NonFiniteError, match="step 2: non-finite loss"):
        trainer.fit(system, dm, 0, 3)


def test_a_nonfinite_mean_loss_is_skipped_on_every_rank(tmp_path):
    dm, system, trainer = _trainer(tmp_path, OtherRank(nan_at=2), False, ["trainer.skip_nonfinite_steps=true"])
    out = trainer.fit(system, dm, 0, 3)
    assert out["skipped"] == 1 and len(out["losses"]) == 2 and all(math.isfinite(v) for v in out["losses"])
    assert out["checkpoint"] is None  # not the writer

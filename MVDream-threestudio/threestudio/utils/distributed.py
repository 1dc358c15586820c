"""Data-parallel training of one scene over the ranks of ``msrun`` (see ``mvdream.ranks``).

N ranks together compute exactly the step one process computes on the whole batch:

* the batch is split by whole view groups (the multiview UNet attends across a group's
  ``n_view`` views): rank r takes groups ``[r * G / N, (r + 1) * G / N)`` of the G groups;
* every random draw that has one value per batch element (cameras, ray jitter, VAE posterior
  noise, diffusion noise) is drawn for the whole batch from the stream one process would use,
  and each rank keeps its rows (``BatchShard.take`` / ``BatchShard.draw``); draws made once per
  batch (timestep, shared background colour, occupancy-grid cells) are the same on every rank
  because every stream starts from the same seed and advances by the same amount;
* the loss of a rank is its groups' share of the batch mean, so the mean over ranks of losses
  and gradients is the whole batch's (``GradMeanAllReduce``, one ``AllReduce`` per step);
* every rank applies the same mean gradient, so parameters, optimizer moments and the
  occupancy grid stay identical and a checkpoint does not depend on the world size.

Only rank 0 writes the trial folder, checkpoints, metrics and images.
"""
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np

from .config import ConfigError


@dataclass(frozen=True)
class BatchShard:
    """This rank's rows of a batch whose leading axis is split evenly over ``world`` ranks."""

    rank: int = 0
    world: int = 1

    def bounds(self, n_global: int) -> Tuple[int, int]:
        if n_global % self.world:
            raise ValueError(f"{n_global} rows cannot be split over {self.world} ranks")
        n = n_global // self.world
        return self.rank * n, (self.rank + 1) * n

    def take(self, x):
        """Rows of this rank of a whole-batch array (leading axis)."""
        if self.world == 1:
            return x
        lo, hi = self.bounds(x.shape[0])
        return x[lo:hi]

    def draw(self, sampler: Callable, local_shape: Sequence[int]) -> np.ndarray:
        """``sampler(shape)`` for the whole batch (``local_shape[0] * world`` rows), this rank's
        rows of it: the same values and generator state as one process drawing the batch."""
        shape = tuple(int(s) for s in local_shape)
        if self.world == 1:
            return sampler(shape)
        return self.take(sampler((shape[0] * self.world,) + shape[1:]))


def draw_rows(sampler: Callable, local_shape: Sequence[int], shard=None) -> np.ndarray:
    """``sampler(local_shape)``, or with a ``BatchShard`` the rank's rows of the whole-batch draw."""
    return sampler(tuple(int(s) for s in local_shape)) if shard is None else shard.draw(sampler, local_shape)


def check_world_size(batch_sizes: Sequence[int], n_view: int, world: int):
    """One-line ConfigError unless every batch's view groups split evenly over ``world`` ranks."""
    for bs in batch_sizes:
        groups = int(bs) // n_view
        if groups % world:
            raise ConfigError(
                f"data.batch_size {bs} is {groups} view group{'s' if groups != 1 else ''} of n_view {n_view}, "
                f"which {world} ranks cannot share (each rank renders whole groups); run a number of ranks "
                f"that divides {groups}, or use a batch size that is a multiple of n_view x ranks = {n_view * world}")


class GradMeanAllReduce:
    """Mean over ranks of (loss, gradients), and whether any rank was signalled, in one
    ``AllReduce`` (MindSpore's collective: HCCL / NCCL / CPU) of a flat buffer."""

    def __init__(self, world: int):
        from mindspore import ops

        self.world = world
        self.all_reduce = ops.AllReduce()

    def __call__(self, loss, grads, signalled: bool = False):
        from mindspore import Tensor, ops

        dtype = grads[0].dtype
        flag = Tensor(np.array([1.0 if signalled else 0.0]), dtype)
        flat = ops.concat([loss.reshape(1).astype(dtype), flag] + [g.reshape(-1) for g in grads])
        flat = self.all_reduce(flat) / self.world
        sizes = [1, 1] + [int(np.prod(g.shape)) for g in grads]
        parts = ops.split(flat, sizes)
        return (parts[0].reshape(loss.shape).astype(loss.dtype),
                tuple(p.reshape(g.shape) for p, g in zip(parts[2:], grads)),
                bool(parts[1].asnumpy()[0] > 0))

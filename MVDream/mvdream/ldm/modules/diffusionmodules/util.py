"""Small building blocks shared by the UNet: timestep embedding, norms, dropout."""
import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..torch_layers import GroupNorm, Identity


def _frequencies(half, max_period):
    """``exp(-ln(max_period) * i / half)`` as the original's fp32 code yields it.

    t * f reaches ~1000 rad, so a single ulp of f already shows in cos/sin (1e-5).
    The exponent is formed in fp32 in the original's op order, then exponentiated
    correctly rounded (via float64); that reproduces PyTorch's values, whereas
    MindSpore's CPU fp32 ``exp`` is off by up to ~50 ulp. A host-side constant.
    """
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def timestep_embedding(timesteps, dim, max_period=10000, repeat_only=False):
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (N, dim), float32.

    Layout is ``[cos(t*f_0..f_{h-1}), sin(t*f_0..f_{h-1})]`` (cos first, as the
    original), with ``f_i = exp(-ln(max_period) * i / h)`` and ``h = dim // 2``;
    an odd ``dim`` gets a trailing zero column. ``repeat_only`` just repeats t.
    """
    t = timesteps.astype(ms.float32)
    if repeat_only:
        return ops.broadcast_to(t[:, None], (t.shape[0], dim))
    half = dim // 2
    freqs = Tensor(_frequencies(half, max_period))
    args = t[:, None] * freqs[None]
    embedding = ops.cat([ops.cos(args), ops.sin(args)], axis=-1)
    if dim % 2:
        embedding = ops.cat([embedding, ops.zeros_like(embedding[:, :1])], axis=-1)
    return embedding


def normalization(channels):
    """The UNet's ``GroupNorm32``: 32 groups, eps 1e-5, computed in float32."""
    return GroupNorm(32, channels, eps=1e-5)


def dropout(p):
    """A parameter-free slot for ``nn.Dropout(p)``; Identity when ``p == 0``.

    Keeps the child index (e.g. ``out_layers.3``) aligned with the original.
    """
    return nn.Dropout(p=p) if p > 0 else Identity()

"""Scaled dot-product attention on CPU, one query block at a time (``attention.cc``).

MindSpore's BatchMatMul + Softmax + BatchMatMul write the whole (Nq, Nk) logits to memory and
read them back twice; for the multiview UNet's self-attention at 32x32 latents those are
671 MB per call, and the traffic cost more than the GEMMs. The kernel keeps a block of logits in
cache instead. :func:`cpu_attention` returns the primitive only when the device target is CPU
and it builds; otherwise callers keep MindSpore's ops. float32, contiguous (B, N, H*D) inputs, the
heads side by side as the projections give them.
The backward recomputes the probabilities with MindSpore's ops (nothing is kept from the
forward).
"""
import functools
import logging
from pathlib import Path

import mindspore as ms
from mindspore import Tensor, nn, ops

from . import cpu_kernels_enabled
from .build import build_library
from .linear import dnnl_link_args

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("attention.cc")


def _split_heads(x, heads):
    # (B, N, H*D) -> (B*H, N, D)
    b, n, inner = x.shape
    return x.reshape(b, n, heads, inner // heads).transpose(0, 2, 1, 3).contiguous().reshape(b * heads, n, -1)


def _attention_primitive(lib, heads, scale):
    """``attention(q (B, Nq, H*D), k (B, Nk, H*D), v (B, Nk, H*D), cfg=[scale, H]) -> (B, Nq, H*D)``."""
    bmm = ops.BatchMatMul()
    bmm_t = ops.BatchMatMul(transpose_b=True)
    bmm_ta = ops.BatchMatMul(transpose_a=True)

    def bprop(q, k, v, cfg, out, dout):
        b, _, inner = q.shape
        qh, kh, vh, douth = (_split_heads(t, heads) for t in (q, k, v, dout))
        probs = ops.softmax(bmm_t(qh * scale, kh), axis=-1)  # (B*H, Nq, Nk)
        dprobs = bmm_t(douth, vh)
        dlogits = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))

        def merge(t):  # (B*H, N, D) -> (B, N, H*D)
            return t.reshape(b, heads, -1, inner // heads).transpose(0, 2, 1, 3).contiguous().reshape(b, -1, inner)

        return (merge(bmm(dlogits, kh) * scale), merge(bmm_ta(dlogits, qh) * scale), merge(bmm_ta(probs, douth)),
                ops.zeros_like(cfg))

    return ops.Custom(f"{lib}:attention_fwd", out_shape=lambda q, k, v, c: q,
                      out_dtype=lambda q, k, v, c: q, func_type="aot", bprop=bprop)


class FusedAttention(nn.Cell):
    """``(q (B, Nq, H*D), k (B, Nk, H*D), v (B, Nk, H*D)) -> (B, Nq, H*D)`` for fixed heads and scale."""

    def __init__(self, lib, heads, scale):
        super().__init__()
        self.op = _attention_primitive(lib, heads, scale)
        self.cfg = Tensor([scale, heads], ms.float32)

    def construct(self, q, k, v):
        return self.op(q.contiguous(), k.contiguous(), v.contiguous(), self.cfg)


@functools.lru_cache(maxsize=None)
def _library():
    try:
        return build_library(_SOURCE, link=dnnl_link_args())
    except Exception as err:  # noqa: BLE001 - no compiler or no oneDNN: MindSpore's ops instead
        log.warning("CPU attention kernel unavailable (%s); using MindSpore's ops", err)
        return None


def cpu_attention(heads, scale):
    """A :class:`FusedAttention` when the device target is CPU and the kernel builds, else None."""
    lib = _library() if cpu_kernels_enabled() else None
    return FusedAttention(lib, heads, scale) if lib else None

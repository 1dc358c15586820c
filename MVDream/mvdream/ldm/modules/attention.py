"""Transformer parts of the multiview UNet: attention, GEGLU feed-forward and the
3D (multiview) spatial transformer.

Parameter names mirror the original PyTorch modules (``to_q``, ``to_out.0``,
``ff.net.0.proj``, ``transformer_blocks.0.norm1``, ...) so that checkpoints load
key for key.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .diffusionmodules.util import dropout as _dropout
from ...kernels.attention import cpu_attention
from ...kernels.norm_act import cpu_kernels
from .torch_layers import GELU, Conv2d, GroupNorm, LayerNorm, Linear, _as, zero_module

_bmm = ops.BatchMatMul()
# NB: every reshape of a transposed/broadcast view goes through .contiguous():
# MindSpore 2.7.1 on CPU with MS_DEV_HOST_BLOCKING_RUN=1 corrupts the heap when
# reshaping a non-contiguous view (values are right, the process later aborts).
_bmm_t = ops.BatchMatMul(transpose_b=True)


def _split_heads(x, heads):
    # (B, N, H*D) -> (B, H, N, D)
    b, n, inner = x.shape
    return x.reshape(b, n, heads, inner // heads).transpose(0, 2, 1, 3)


def attention(q, k, v, heads, scale, mask=None, attn_bias=None):
    """Multi-head scaled dot-product attention.

    ``q``: (B, Nq, H*D), ``k``/``v``: (B, Nk, H*D) -> (B, Nq, H*D).
    ``mask`` (optional): (B, Nk) booleans, True = attend (the original's convention).
    ``attn_bias`` (optional): additive logits bias broadcastable to (B, H, Nq, Nk),
    e.g. OpenCLIP's causal mask (0 / -inf).
    """
    b, nq, inner = q.shape
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    # q.k and the softmax in fp32 whatever the compute dtype (the original
    # disables autocast here): fp16 logits overflow for long multiview sequences.
    # The scale goes onto q (D columns) instead of the (Nq, Nk) logits: the same
    # numbers when it is a power of two, as for every 64-wide head.
    sim = _bmm_t(_as(q, ms.float32) * scale, _as(k, ms.float32))
    if attn_bias is not None:
        sim = sim + attn_bias.astype(ms.float32)
    if mask is not None:
        keep = mask.reshape(mask.shape[0], 1, 1, -1).astype(ms.bool_)
        sim = ops.masked_fill(sim, ops.logical_not(keep), float(-np.finfo(np.float32).max))
    probs = _as(ops.softmax(sim, axis=-1), v.dtype)
    out = _bmm(probs, v)
    return out.transpose(0, 2, 1, 3).contiguous().reshape(b, nq, inner)


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------

class CrossAttention(nn.Cell):
    """Multi-head attention of ``x`` over ``context`` (self-attention if None)."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = Linear(query_dim, inner_dim, bias=False)
        self.to_k = Linear(context_dim, inner_dim, bias=False)
        self.to_v = Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.SequentialCell([Linear(inner_dim, query_dim), _dropout(dropout)])
        # On CPU one kernel, a query block at a time: the multiview logits are 671 MB at 32x32.
        self.fused = cpu_attention(heads, self.scale)

    def construct(self, x, context=None, mask=None):
        context = x if context is None else context.astype(x.dtype)
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)  # (B, N, H*D)
        if self.fused is not None and mask is None and q.dtype == ms.float32:
            return self.to_out(self.fused(q, k, v))
        return self.to_out(attention(q, k, v, self.heads, self.scale, mask))


class GEGLU(nn.Cell):
    """Gated GELU: project to 2*dim_out, return first half * GELU(second half)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)
        kernels = cpu_kernels()
        self.fused = kernels.geglu if kernels is not None else None  # one pass on CPU

    def construct(self, x):
        h = self.proj(x)
        if self.fused is not None:
            return _as(self.fused(_as(h, ms.float32)), h.dtype)
        x, gate = ops.chunk(h, 2, axis=-1)
        return x * ops.gelu(gate, approximate="none")  # exact (erf) GELU, as torch's default


class FeedForward(nn.Cell):
    """``net = [project_in, Dropout, Linear]``; project_in is GEGLU when ``glu``."""

    def __init__(self, dim, dim_out=None, mult=4, glu=False, dropout=0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = dim if dim_out is None else dim_out
        project_in = GEGLU(dim, inner_dim) if glu else nn.SequentialCell([Linear(dim, inner_dim), GELU()])
        self.net = nn.SequentialCell([project_in, _dropout(dropout), Linear(inner_dim, dim_out)])

    def construct(self, x):
        return self.net(x)


class BasicTransformerBlock3D(nn.Cell):
    """Pre-norm transformer block whose self-attention spans all views.

    Rows of the batch come in runs of ``num_frames`` views of one object
    (``(b f)``, views fastest). Self-attention (``attn1``) regroups the tokens to
    ``(b, f*l, c)`` so every view attends to every view; cross-attention and the
    feed-forward run per view.
    """

    def __init__(self, dim, n_heads, d_head, dropout=0.0, context_dim=None, gated_ff=True,
                 checkpoint=True, disable_self_attn=False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim=context_dim if disable_self_attn else None,
                                    heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.checkpoint = checkpoint  # accepted for config compatibility; inference-only port

    def construct(self, x, context=None, num_frames=1):
        bf, l, c = x.shape
        x = x.reshape(bf // num_frames, num_frames * l, c)
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = x.reshape(bf, l, c)
        x = self.attn2(self.norm2(x), context=context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class SpatialTransformer3D(nn.Cell):
    """GroupNorm -> proj_in -> transformer blocks over h*w tokens -> proj_out, plus residual.

    With ``use_linear`` the projections are Linear layers on tokens (SD2.x / MVDream),
    otherwise 1x1 convolutions on the feature map.
    """

    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None,
                 disable_self_attn=False, use_linear=False, use_checkpoint=True):
        super().__init__()
        if not isinstance(context_dim, (list, tuple)):
            context_dim = [context_dim] * depth
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = GroupNorm(32, in_channels, eps=1e-6)
        if use_linear:
            self.proj_in = Linear(in_channels, inner_dim)
            # The original swaps the arguments here; harmless since they are equal.
            self.proj_out = zero_module(Linear(in_channels, inner_dim))
        else:
            self.proj_in = Conv2d(in_channels, inner_dim, 1)
            self.proj_out = zero_module(Conv2d(inner_dim, in_channels, 1))
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock3D(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim[d],
                                    disable_self_attn=disable_self_attn, checkpoint=use_checkpoint)
            for d in range(depth)])
        self.use_linear = use_linear

    def construct(self, x, context=None, num_frames=1):
        if not isinstance(context, (list, tuple)):
            context = [context] * len(self.transformer_blocks)
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.transpose(0, 2, 3, 1).contiguous().reshape(b, h * w, -1)  # b c h w -> b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context=context[i], num_frames=num_frames)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).transpose(0, 3, 1, 2)  # b (h w) c -> b c h w
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in

"""Encoder/decoder of the KL autoencoder (the "first stage" of latent diffusion).

Attribute names follow the original PyTorch modules exactly (``down.0.block.0.norm1``,
``mid.attn_1.q``, ``up.1.upsample.conv``, ...), so a PyTorch state dict loads key
for key.  The timestep-conditioned ``Model`` of the original file is not ported:
MVDream never builds it.
"""
import mindspore as ms
from mindspore import nn, ops

from ..torch_layers import Conv2d, GroupNorm, Identity, Linear, upsample_nearest2x


def nonlinearity(x):
    # swish / SiLU, written out as the original does
    return x * ops.sigmoid(x)


def Normalize(in_channels, num_groups=32):
    # every VAE norm is GroupNorm(32) with eps 1e-6 (not the 1e-5 of the UNet)
    return GroupNorm(num_groups, in_channels, eps=1e-6, affine=True)


class Upsample(nn.Cell):
    """Nearest-neighbour x2, then an optional 3x3 conv."""

    def __init__(self, in_channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = Conv2d(in_channels, in_channels, 3, stride=1, padding=1)

    def construct(self, x):
        x = upsample_nearest2x(x)
        if self.with_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Cell):
    """Stride-2 3x3 conv after padding right/bottom only (or 2x2 average pooling)."""

    def __init__(self, in_channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            # padding right/bottom only, the original's F.pad(x, (0, 1, 0, 1)), done by the
            # conv itself: a separate pad op took ~7% of the encoder's forward+backward on CPU
            self.conv = Conv2d(in_channels, in_channels, 3, stride=2, padding=(0, 1, 0, 1))
        else:
            self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def construct(self, x):
        if self.with_conv:
            return self.conv(x)
        return self.pool(x)


class ResnetBlock(nn.Cell):
    """norm-swish-conv twice, plus a (1x1 or 3x3) conv skip when the width changes."""

    def __init__(self, *, in_channels, out_channels=None, conv_shortcut=False, dropout, temb_channels=512):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.temb_proj = Linear(temb_channels, out_channels) if temb_channels > 0 else None
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else Identity()
        self.conv2 = Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
            else:
                self.nin_shortcut = Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def construct(self, x, temb=None):
        h = self.conv1(self.norm1(x, silu=True))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return self.conv2(self.dropout(self.norm2(h, silu=True)), residual=x)  # x + h


class AttnBlock(nn.Cell):
    """Single-head self-attention over all H*W positions with 1x1-conv q/k/v."""

    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = Conv2d(in_channels, in_channels, 1)
        self.k = Conv2d(in_channels, in_channels, 1)
        self.v = Conv2d(in_channels, in_channels, 1)
        self.proj_out = Conv2d(in_channels, in_channels, 1)
        self.scale = float(in_channels) ** -0.5
        self.bmm_qk = ops.BatchMatMul(transpose_a=True)   # (c,hw)^T @ (c,hw) -> (hw,hw)
        self.bmm_v = ops.BatchMatMul(transpose_b=True)    # (c,hw) @ (hw_q,hw_k)^T -> (c,hw_q)

    def construct(self, x):
        h_ = self.norm(x)
        b, c, hh, ww = h_.shape
        q = self.q(h_).reshape(b, c, hh * ww)
        k = self.k(h_).reshape(b, c, hh * ww)
        v = self.v(h_).reshape(b, c, hh * ww)
        # scores and softmax in float32 so that float16 runs neither overflow nor lose
        # the small weights; w[b, i, j] = <q_i, k_j> * c^-0.5, normalised over keys j
        w_ = self.bmm_qk(q.astype(ms.float32), k.astype(ms.float32)) * self.scale
        w_ = ops.softmax(w_, axis=-1).astype(v.dtype)
        out = self.bmm_v(v, w_).reshape(b, c, hh, ww)
        return self.proj_out(out, residual=x)  # x + proj_out(out)


def make_attn(in_channels, attn_type="vanilla", attn_kwargs=None):
    """The original's attention factory.

    "vanilla-xformers" is the same computation with the same parameters as "vanilla"
    (the original switches to it whenever xformers is installed), so both map to
    ``AttnBlock``.
    """
    if attn_type in ("vanilla", "vanilla-xformers"):
        assert attn_kwargs is None
        return AttnBlock(in_channels)
    if attn_type == "none":
        return Identity()
    raise NotImplementedError(f"attn_type {attn_type!r} is not supported by this port")


class _Level(nn.Cell):
    """One resolution level: ``block`` and ``attn`` lists plus an optional resampler
    (the original's anonymous ``nn.Module()`` containers)."""

    def __init__(self, blocks, attns, resample_name=None, resample=None):
        super().__init__()
        self.block = nn.CellList(blocks)
        self.attn = nn.CellList(attns)
        self.has_resample = resample is not None
        if resample is not None:
            setattr(self, resample_name, resample)

    def construct(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Cell):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, block_in, dropout, attn_type):
        super().__init__()
        self.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=0, dropout=dropout)
        self.attn_1 = make_attn(block_in, attn_type=attn_type)
        self.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=0, dropout=dropout)

    def construct(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Cell):
    """image (B, in_channels, H, W) -> (B, 2*z_channels or z_channels, H/f, W/f),
    f = 2**(len(ch_mult)-1)."""

    def __init__(self, *, ch, out_ch, ch_mult=(1, 2, 4, 8), num_res_blocks, attn_resolutions, dropout=0.0,
                 resamp_with_conv=True, in_channels, resolution, z_channels, double_z=True,
                 use_linear_attn=False, attn_type="vanilla", **ignore_kwargs):
        super().__init__()
        attn_type = "linear" if use_linear_attn else attn_type
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels

        self.conv_in = Conv2d(in_channels, ch, 3, stride=1, padding=1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.in_ch_mult = in_ch_mult
        curr_res = resolution
        levels = []
        for i_level in range(self.num_resolutions):
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                          temb_channels=self.temb_ch, dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attns.append(make_attn(block_in, attn_type=attn_type))
            down = None
            if i_level != self.num_resolutions - 1:
                down = Downsample(block_in, resamp_with_conv)
                curr_res //= 2
            levels.append(_Level(blocks, attns, "downsample", down))
        self.down = nn.CellList(levels)

        self.mid = _Mid(block_in, dropout, attn_type)
        self.norm_out = Normalize(block_in)
        self.conv_out = Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, stride=1, padding=1)

    def construct(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if level.has_resample:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(self.norm_out(h, silu=True))


class Decoder(nn.Cell):
    """latent (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f).

    ``up`` is stored with index 0 = highest resolution (as the original's
    ``insert(0, ...)`` leaves it) and run from the last index down.
    """

    def __init__(self, *, ch, out_ch, ch_mult=(1, 2, 4, 8), num_res_blocks, attn_resolutions, dropout=0.0,
                 resamp_with_conv=True, in_channels, resolution, z_channels, give_pre_end=False,
                 tanh_out=False, use_linear_attn=False, attn_type="vanilla", **ignorekwargs):
        super().__init__()
        attn_type = "linear" if use_linear_attn else attn_type
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)

        self.conv_in = Conv2d(z_channels, block_in, 3, stride=1, padding=1)
        self.mid = _Mid(block_in, dropout, attn_type)

        levels = []
        for i_level in reversed(range(self.num_resolutions)):
            block_out = ch * ch_mult[i_level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                          temb_channels=self.temb_ch, dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attns.append(make_attn(block_in, attn_type=attn_type))
            up = None
            if i_level != 0:
                up = Upsample(block_in, resamp_with_conv)
                curr_res *= 2
            levels.insert(0, _Level(blocks, attns, "upsample", up))
        self.up = nn.CellList(levels)

        self.norm_out = Normalize(block_in)
        self.conv_out = Conv2d(block_in, out_ch, 3, stride=1, padding=1)

    def construct(self, z):
        h = self.mid(self.conv_in(z))
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            h = level(h)
            if level.has_resample:
                h = level.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(self.norm_out(h, silu=True))
        if self.tanh_out:
            h = ops.tanh(h)
        return h

"""MVDream's multiview UNet (SD2.1 UNet + cross-view attention + camera embedding).

Module and attribute names follow the original ``openaimodel.py`` so that the
released checkpoint's ``model.diffusion_model.*`` keys are this cell's parameter
names (``time_embed.0``, ``input_blocks.1.0.in_layers.2``, ``output_blocks.5.2.conv``...).
"""
import mindspore as ms
from mindspore import nn, ops

from ....graph import GraphFunction
from ..attention import SpatialTransformer3D
from ..torch_layers import Conv2d, Linear, upsample_nearest2x, zero_module
from .util import dropout as _dropout
from .util import normalization, timestep_embedding


class TimestepBlock(nn.Cell):
    """Marker base: ``construct(x, emb)`` takes the timestep(+camera) embedding."""


class TimestepEmbedSequential(nn.CellList):
    """Runs its children in order, giving each the inputs it understands:
    ``emb`` to :class:`TimestepBlock`, ``context``/``num_frames`` to transformers."""

    def __init__(self, *layers):
        super().__init__(list(layers))

    def construct(self, x, emb, context=None, num_frames=1):
        return run_layers(self, x, emb, context, num_frames)


def run_layers(layers, x, emb, context, num_frames):
    """A :class:`TimestepEmbedSequential`'s forward as a function: a static graph cannot call a
    ``CellList``, but it can run this loop over one."""
    for layer in layers:
        if isinstance(layer, TimestepBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer3D):
            x = layer(x, context, num_frames=num_frames)
        else:
            x = layer(x)
    return x


class Upsample(nn.Cell):
    """Nearest-neighbour x2, then (if ``use_conv``) a 3x3 conv."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None, padding=1):
        super().__init__()
        if dims != 2:
            raise NotImplementedError("only 2D Upsample is ported")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = Conv2d(channels, self.out_channels, 3, padding=padding)

    def construct(self, x):
        x = upsample_nearest2x(x)
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Cell):
    """3x3 stride-2 conv (``op``), or 2x2 average pooling without ``use_conv``."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None, padding=1):
        super().__init__()
        if dims != 2:
            raise NotImplementedError("only 2D Downsample is ported")
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = Conv2d(channels, self.out_channels, 3, stride=2, padding=padding)
        else:
            if self.channels != self.out_channels:
                raise ValueError("Downsample without conv cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def construct(self, x):
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the embedding:
    ``skip(x) + out_layers(in_layers(x) + emb_layers(emb))``
    (or FiLM ``norm(h)*(1+scale)+shift`` with ``use_scale_shift_norm``)."""

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_conv=False,
                 use_scale_shift_norm=False, dims=2, use_checkpoint=False, up=False, down=False):
        super().__init__()
        if dims != 2:
            raise NotImplementedError("only 2D ResBlock is ported")
        if up or down:
            raise NotImplementedError("resblock_updown is not used by MVDream and not ported")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint  # accepted and ignored (inference port)
        self.in_layers = nn.SequentialCell([
            normalization(channels), nn.SiLU(), Conv2d(channels, self.out_channels, 3, padding=1)])
        self.emb_layers = nn.SequentialCell([
            nn.SiLU(), Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)])
        self.out_layers = nn.SequentialCell([
            normalization(self.out_channels), nn.SiLU(), _dropout(dropout),
            zero_module(Conv2d(self.out_channels, self.out_channels, 3, padding=1))])
        if self.out_channels == channels:
            self.skip_connection = None
        elif use_conv:
            self.skip_connection = Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = Conv2d(channels, self.out_channels, 1)

    def construct(self, x, emb):
        # in_layers = [norm, SiLU, conv]: the norm applies the SiLU itself (one fused pass
        # on CPU); same for out_layers = [norm, SiLU, dropout, conv] below.
        h = self.in_layers[2](self.in_layers[0](x, silu=True))
        # emb stays fp32 up to here (as in the original); cast to the compute dtype.
        emb_out = self.emb_layers(emb).astype(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = ops.chunk(emb_out, 2, axis=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers[3](self.out_layers[2](self.out_layers[0](h + emb_out, silu=True)))
        skip = x if self.skip_connection is None else self.skip_connection(x)
        return skip + h


def _mlp(dim_in, dim):
    """``Linear -> SiLU -> Linear``, the shape of the time and camera embedders."""
    return nn.SequentialCell([Linear(dim_in, dim), nn.SiLU(), Linear(dim, dim)])


class MultiViewUNetModel(nn.Cell):
    """The MVDream UNet. Accepts the original constructor parameters (see
    ``configs/sd-v2-base.yaml``); options MVDream never uses (class labels,
    codebook prediction, resblock up/down, non-transformer attention, 1D/3D)
    raise ``NotImplementedError``.

    Extra option ``use_fp16`` (as in the original) or ``dtype``: the compute dtype
    of the UNet trunk. Parameters stay float32 (cast per op); norms, the attention
    softmax and the time/camera embedding run in float32; the output is returned
    in the input's dtype.

    Port option ``graph_mode``: run the forward as a static graph (``mvdream.graph``). At full
    size on 2 CPU cores: the same numbers in 0.73x (AMD EPYC) to 0.9x (Intel Xeon) the PyNative
    time, after a one-off compile of ~40 s, with ~0.3 GB more peak memory per sample of the
    batch. Its output is then a constant to autodiff, as DDIM and the SDS guidance need; leave
    it off to differentiate through the UNet.
    """

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True,
                 dims=2, num_classes=None, use_checkpoint=False, use_fp16=False, use_bf16=False,
                 num_heads=-1, num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False, use_spatial_transformer=False,
                 transformer_depth=1, context_dim=None, n_embed=None, legacy=True,
                 disable_self_attentions=None, num_attention_blocks=None, disable_middle_self_attn=False,
                 use_linear_in_transformer=False, adm_in_channels=None, camera_dim=None, dtype=None,
                 graph_mode=False):
        super().__init__()
        if num_classes is not None or n_embed is not None or adm_in_channels is not None:
            raise NotImplementedError("class-conditional / codebook UNet variants are not ported")
        if resblock_updown:
            raise NotImplementedError("resblock_updown is not ported")
        if not use_spatial_transformer:
            raise NotImplementedError("only the spatial-transformer UNet (use_spatial_transformer=True) is ported")
        if context_dim is None:
            raise ValueError("use_spatial_transformer needs context_dim")
        if not isinstance(context_dim, int):
            context_dim = list(context_dim)  # OmegaConf ListConfig -> list
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("either num_heads or num_head_channels has to be set")
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(channel_mult)
        elif len(num_res_blocks) != len(channel_mult):
            raise ValueError("num_res_blocks must be an int or have one entry per channel_mult level")
        if disable_self_attentions is not None and len(disable_self_attentions) != len(channel_mult):
            raise ValueError("disable_self_attentions needs one entry per level")
        if num_attention_blocks is not None and len(num_attention_blocks) != len(num_res_blocks):
            raise ValueError("num_attention_blocks needs one entry per level")
        if dtype is None:
            dtype = ms.float16 if use_fp16 else (ms.bfloat16 if use_bf16 else ms.float32)

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = list(num_res_blocks)
        self.attention_resolutions = list(attention_resolutions)
        self.channel_mult = list(channel_mult)
        self.use_checkpoint = use_checkpoint
        self.dtype = dtype

        time_embed_dim = model_channels * 4
        self.time_embed = _mlp(model_channels, time_embed_dim)
        self.camera_embed = _mlp(camera_dim, time_embed_dim) if camera_dim is not None else None

        def res_block(ch_in, ch_out):
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out,
                            use_scale_shift_norm=use_scale_shift_norm, use_checkpoint=use_checkpoint)

        def transformer(ch, disable_sa):
            # Heads from num_head_channels when given, else a fixed num_heads;
            # ``legacy`` derives the head width from the head count instead.
            if num_head_channels == -1:
                heads, dim_head = num_heads, ch // num_heads
            else:
                heads, dim_head = ch // num_head_channels, num_head_channels
            if legacy:
                dim_head = ch // heads
            return SpatialTransformer3D(ch, heads, dim_head, depth=transformer_depth, context_dim=context_dim,
                                        disable_self_attn=disable_sa, use_linear=use_linear_in_transformer,
                                        use_checkpoint=use_checkpoint)

        def wants_attention(ds, level, index):
            return ds in self.attention_resolutions and (
                num_attention_blocks is None or index < num_attention_blocks[level])

        def self_attn_disabled(level):
            return bool(disable_self_attentions[level]) if disable_self_attentions is not None else False

        # Encoder: conv_in, then per level num_res_blocks x (ResBlock [+ transformer]),
        # then a Downsample except at the last level. Remember every output width
        # for the skip connections.
        self.input_blocks = nn.CellList([TimestepEmbedSequential(Conv2d(in_channels, model_channels, 3, padding=1))])
        input_block_chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for nr in range(self.num_res_blocks[level]):
                layers = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if wants_attention(ds, level, nr):
                    layers.append(transformer(ch, self_attn_disabled(level)))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, out_channels=ch)))
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch), transformer(ch, disable_middle_self_attn), res_block(ch, ch))

        # Decoder: per level (deepest first) num_res_blocks+1 x (ResBlock on
        # [h, skip] [+ transformer]) and an Upsample after the last one (except level 0).
        self.output_blocks = nn.CellList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(self.num_res_blocks[level] + 1):
                layers = [res_block(ch + input_block_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if wants_attention(ds, level, i):
                    layers.append(transformer(ch, self_attn_disabled(level)))
                if level and i == self.num_res_blocks[level]:
                    layers.append(Upsample(ch, conv_resample, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.SequentialCell([
            normalization(ch), nn.SiLU(), zero_module(Conv2d(model_channels, out_channels, 3, padding=1))])

        unet = self

        def forward(x, timesteps, context, camera, num_frames):  # a closure (see GraphFunction)
            return unet.forward(x, timesteps, context, camera, num_frames)
        self.graph_mode = graph_mode  # read at every call: a user of the model may switch it
        self.forward_graph = GraphFunction(forward, self, depends_on=lambda: unet.dtype)

    def embed(self, timesteps, camera=None):
        """The embedding every ResBlock receives: time MLP (+ camera MLP), float32."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if camera is not None:
            emb = emb + self.camera_embed(camera.astype(ms.float32))
        return emb

    def construct(self, x, timesteps, context=None, camera=None, num_frames=1):
        """``x``: ((N*F), C, H, W) with the F views of each object consecutive;
        ``timesteps``: ((N*F),); ``context``: ((N*F), L, context_dim);
        ``camera``: ((N*F), camera_dim) or None; returns ((N*F), out_channels, H, W)."""
        # Checked here, outside the graph, so that bad input fails before any compile.
        if x.shape[0] % num_frames != 0:
            raise ValueError(f"[UNet] input batch size {x.shape[0]} must be divisible by num_frames={num_frames}")
        if camera is not None:
            if self.camera_embed is None:
                raise ValueError("camera given but the model was built without camera_dim")
            if camera.shape[0] != timesteps.shape[0]:
                raise ValueError(f"camera batch {camera.shape[0]} != timesteps batch {timesteps.shape[0]}")
        if self.graph_mode:
            return self.forward_graph(x, timesteps, context, camera, num_frames)
        return self.forward(x, timesteps, context, camera, num_frames)

    def forward(self, x, timesteps, context, camera, num_frames):
        """:meth:`construct` without its input checks, in PyNative or as the static graph."""
        emb = self.embed(timesteps, camera)
        h = x.astype(self.dtype)
        hs = []
        for block in self.input_blocks:
            h = run_layers(block, h, emb, context, num_frames)
            hs.append(h)
        h = run_layers(self.middle_block, h, emb, context, num_frames)
        # the skips are taken back deepest first (indexed: a static graph has no list.pop)
        for i, block in enumerate(self.output_blocks):
            h = run_layers(block, ops.cat([h, hs[-1 - i]], axis=1), emb, context, num_frames)
        # out = [norm, SiLU, conv], the SiLU fused into the norm
        return self.out[2](self.out[0](h.astype(x.dtype), silu=True))

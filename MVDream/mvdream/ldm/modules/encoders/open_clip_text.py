"""OpenCLIP text tower (open_clip 2.7.0 ``CLIP`` minus ``visual``) in MindSpore.

Parameter names equal the PyTorch ones (``token_embedding.weight``,
``transformer.resblocks.N.attn.in_proj_weight``, ...), so the
``cond_stage_model.model.*`` entries of an MVDream checkpoint load 1:1.

The original runs the resblocks sequence-first (L, N, D); here they run
batch-first (N, L, D), which computes the same function.
"""
import glob
import json
import math
import os

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, XavierUniform, initializer

from ..attention import attention
from ..torch_layers import GELU, Affine, Embedding, Identity, LayerNorm, Linear

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")


def list_models():
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(_CONFIG_DIR, "*.json")))


def is_config_path(arch):
    """``arch`` names a file (a ``.json`` name or anything with a directory part), not a packaged config."""
    arch = str(arch)
    return arch.lower().endswith(".json") or os.sep in arch or "/" in arch


def get_model_config(arch):
    """open_clip model config (``embed_dim``, ``text_cfg``, ...) of architecture ``arch``: the
    name of a config shipped in ``model_configs/`` or the path of an open_clip-style model json
    (relative paths from the working directory)."""
    if is_config_path(arch):
        return load_model_config_file(os.path.expanduser(str(arch)))
    path = os.path.join(_CONFIG_DIR, f"{arch}.json")
    if not os.path.isfile(path):
        raise ValueError(f"unknown OpenCLIP architecture {arch!r}; known: {', '.join(list_models())} "
                         "(or give the path of an open_clip model json)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


_TEXT_OPTIONS = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value")
_INT_TEXT_OPTIONS = _TEXT_OPTIONS[:5]


def text_cfg_problem(model_cfg):
    """What keeps ``TextTransformer.from_config`` from building this config, or None."""
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        return "HuggingFace text towers are not supported"
    unknown = sorted(set(text_cfg) - set(_TEXT_OPTIONS))
    if unknown:
        return f"unsupported text_cfg options: {unknown}"
    return None


def load_model_config_file(path):
    """An open_clip model json from disk, checked for what the text tower needs (one-line errors:
    FileNotFoundError, or ModelConfigError naming the file and the problem)."""
    from mvdream.errors import ModelConfigError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: OpenCLIP model config not found (arch is read as a path to an "
                                f"open_clip model json; or name one of: {', '.join(list_models())})")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelConfigError(f"{path}: not a readable open_clip model json ({reason})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("text_cfg"), dict):
        raise ModelConfigError(f"{path}: an open_clip model json needs a 'text_cfg' object")
    embed_dim = cfg.get("embed_dim")
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim <= 0:
        raise ModelConfigError(f"{path}: 'embed_dim' must be a positive integer, got {embed_dim!r}")
    for key in _INT_TEXT_OPTIONS:
        value = cfg["text_cfg"].get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelConfigError(f"{path}: text_cfg.{key} must be a positive integer, got {value!r}")
    problem = text_cfg_problem(cfg)
    if problem is None and cfg["text_cfg"].get("width", 512) % cfg["text_cfg"].get("heads", 8):
        problem = "text_cfg.width must be a multiple of text_cfg.heads"
    if problem:
        raise ModelConfigError(f"{path}: {problem}")
    return cfg


class QuickGELU(nn.Cell):
    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


class LayerScale(nn.Cell):
    def __init__(self, dim, init_value):
        super().__init__()
        self.gamma = Parameter(Tensor(np.full((dim,), init_value, np.float32)), name="gamma")

    def construct(self, x):
        return x * self.gamma.astype(x.dtype)


class MultiheadAttention(nn.Cell):
    """``torch.nn.MultiheadAttention`` (self-attention only, batch-first input).

    Keeps torch's packed ``in_proj_weight`` (3D, D) / ``in_proj_bias`` and ``out_proj``.
    ``attn_mask`` is additive (L, L); scores and softmax are computed in float32.
    """

    def __init__(self, embed_dim, num_heads):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.in_proj_weight = Parameter(initializer(XavierUniform(), (3 * embed_dim, embed_dim), ms.float32),
                                        name="in_proj_weight")
        self.in_proj_bias = Parameter(initializer("zeros", (3 * embed_dim,), ms.float32), name="in_proj_bias")
        # few rows: prompts x 77 tokens (see Affine)
        self.out_proj = Linear(embed_dim, embed_dim, few_rows=True)
        self.in_proj = Affine(few_rows=True)

    def pack_weight(self, enabled=True):
        """See :func:`mvdream.ldm.modules.torch_layers.pack_weights`."""
        self.in_proj.pack(self.in_proj_weight if enabled else None)

    def construct(self, x, attn_mask=None):
        d = x.shape[-1]
        q, k, v = ops.split(self.in_proj(x, self.in_proj_weight, self.in_proj_bias), d, axis=-1)
        out = attention(q, k, v, self.num_heads, self.scale, attn_bias=attn_mask)
        return self.out_proj(out)


class MLP(nn.Cell):
    """``c_fc`` -> GELU -> ``c_proj`` (torch ``nn.Sequential`` names)."""

    def __init__(self, width, hidden, act):
        super().__init__()
        self.c_fc = Linear(width, hidden, few_rows=True)
        self.gelu = act
        self.c_proj = Linear(hidden, width, few_rows=True)

    def construct(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Cell):
    """Pre-norm block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width, heads, mlp_ratio=4.0, ls_init_value=None, quick_gelu=False):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=1e-5)
        self.attn = MultiheadAttention(width, heads)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else Identity()
        self.ln_2 = LayerNorm(width, eps=1e-5)
        self.mlp = MLP(width, int(width * mlp_ratio), QuickGELU() if quick_gelu else GELU())
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else Identity()

    def construct(self, x, attn_mask=None):
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Cell):
    def __init__(self, width, layers, heads, **block_kwargs):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads, **block_kwargs) for _ in range(layers)])

    def construct(self, x, attn_mask=None, num_blocks=None):
        """Run the first ``num_blocks`` blocks (all by default)."""
        for block in self.resblocks[:self.layers if num_blocks is None else num_blocks]:
            x = block(x, attn_mask)
        return x


def causal_mask(length):
    """Additive causal mask: 0 on/below the diagonal, -inf above."""
    return np.triu(np.full((length, length), -np.inf, np.float32), 1)


class TextTransformer(nn.Cell):
    """The text half of open_clip's ``CLIP``, with the same parameter names.

    ``text_projection`` and ``logit_scale`` are kept (the released checkpoint has
    them) although MVDream's embedder never uses them.
    """

    def __init__(self, embed_dim, context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                 mlp_ratio=4.0, ls_init_value=None, quick_gelu=False):
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.token_embedding = Embedding(vocab_size, width)
        self.token_embedding.weight.set_data(initializer(Normal(0.02), (vocab_size, width), ms.float32))
        self.positional_embedding = Parameter(initializer(Normal(0.01), (context_length, width), ms.float32),
                                              name="positional_embedding")
        self.transformer = Transformer(width, layers, heads, mlp_ratio=mlp_ratio,
                                       ls_init_value=ls_init_value, quick_gelu=quick_gelu)
        self.ln_final = LayerNorm(width, eps=1e-5)
        self.text_projection = Parameter(initializer(Normal(width ** -0.5), (width, embed_dim), ms.float32),
                                         name="text_projection")
        self.logit_scale = Parameter(Tensor(np.array(math.log(1 / 0.07), np.float32)), name="logit_scale")
        # Non-persistent in the original (not in checkpoints): a plain Tensor, not a Parameter.
        self.attn_mask = Tensor(causal_mask(context_length))

    @classmethod
    def from_config(cls, model_cfg):
        """Build from an open_clip model config dict (``embed_dim``, ``text_cfg``, ``quick_gelu``)."""
        problem = text_cfg_problem(model_cfg)
        if problem:
            raise ValueError(problem)
        text_cfg = dict(model_cfg.get("text_cfg", {}))
        return cls(model_cfg["embed_dim"], quick_gelu=bool(model_cfg.get("quick_gelu", False)), **text_cfg)

    def embed(self, tokens):
        """``token_embedding(tokens) + positional_embedding`` (float32)."""
        return self.token_embedding(tokens) + self.positional_embedding

    def encode_hidden(self, tokens, skip_last=0, dtype=ms.float32):
        """Per-token features: embedding, all but the last ``skip_last`` blocks, ``ln_final``."""
        x = self.embed(tokens).astype(dtype)
        x = self.transformer(x, self.attn_mask, self.transformer.layers - skip_last)
        return self.ln_final(x)

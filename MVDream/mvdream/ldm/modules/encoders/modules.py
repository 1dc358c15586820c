"""Text encoders for conditioning (MVDream uses ``FrozenOpenCLIPEmbedder``)."""
import mindspore as ms
from mindspore import Tensor, nn

from ....graph import GraphFunction
from ..torch_layers import pack_weights as pack
from .open_clip_text import TextTransformer, get_model_config
from .tokenizer import tokenize


class AbstractEncoder(nn.Cell):
    def encode(self, *args, **kwargs):
        raise NotImplementedError


_DTYPES = {"float32": ms.float32, "fp32": ms.float32, "float16": ms.float16, "fp16": ms.float16}


class FrozenOpenCLIPEmbedder(AbstractEncoder):
    """OpenCLIP text transformer: per-token features (N, 77, width) for a list of prompts.

    ``arch``: an open_clip architecture shipped in ``open_clip_text``'s ``model_configs/``
    (e.g. "ViT-H-14") or the path of an open_clip-style model json (``embed_dim``,
    ``text_cfg``; a name ending in ``.json`` or with a directory part, relative to the
    working directory), so a config can bring its own text-tower sizes.

    ``layer="penultimate"`` (MVDream/SD2) skips the last residual block and still
    applies ``ln_final``; ``layer="last"`` runs all blocks.

    ``version`` (the open_clip pretrained tag) is accepted for config compatibility
    only: nothing is downloaded, the weights come from the MVDream checkpoint
    (``cond_stage_model.model.*``). ``device`` is likewise ignored (MindSpore's
    context picks the device). ``dtype`` ("float32" default, or "float16") is the
    compute dtype of the transformer; LayerNorm and attention softmax run in float32.
    ``graph_mode`` runs the transformer as a static graph (``mvdream.graph``: the same numbers in
    0.45x the PyNative time on 2 CPU cores).
    ``pack_weights`` (frozen, float32, CPU): keep a copy of the GEMM weights in oneDNN's packed
    layout (:class:`mvdream.kernels.linear.PackedLinear`), ~15% of the encoder's time for the
    weights' memory again (+1.2 GB for ViT-H); ``False`` saves that memory. The attribute of
    the same name can be changed later; the next call packs or drops the copy.
    """

    LAYERS = ("last", "penultimate")

    def __init__(self, arch="ViT-H-14", version="laion2b_s32b_b79k", device="cpu", max_length=77,
                 freeze=True, layer="last", dtype="float32", graph_mode=True, pack_weights=True):
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got {layer!r}")
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        self.model = TextTransformer.from_config(get_model_config(arch))
        self.arch = arch
        self.version = version
        self.device = device
        # Kept for signature compatibility; like the original, tokenisation always
        # uses the model's context length (open_clip.tokenize's default, 77).
        self.max_length = max_length
        self.dtype = dtype
        self.layer = layer
        # Number of trailing resblocks to skip.
        self.layer_idx = self.LAYERS.index(layer)
        embedder = self

        def hidden(tokens):  # a closure, not a bound method (see GraphFunction)
            return embedder.model.encode_hidden(tokens, skip_last=embedder.layer_idx, dtype=embedder.dtype)
        self.pack_weights = pack_weights
        # packed again whenever the weights, the dtype or pack_weights change (GraphFunction's prepare)
        self.hidden_graph = GraphFunction(
            hidden, self.model, graph_mode,
            depends_on=lambda: (embedder.layer_idx, embedder.dtype, embedder.pack_weights),
            prepare=(lambda: pack(embedder.model, embedder.pack_weights and embedder.dtype == ms.float32))
            if freeze else None)
        if freeze:
            self.freeze()

    def freeze(self):
        self.set_train(False)
        for param in self.get_parameters():
            param.requires_grad = False

    def tokenize(self, text):
        return Tensor(tokenize(text, context_length=self.model.context_length))

    def encode_with_transformer(self, tokens):
        return self.hidden_graph(tokens)  # (N, 77, width)

    def construct(self, text):
        return self.encode_with_transformer(self.tokenize(text))

    def encode(self, text):
        return self(text)

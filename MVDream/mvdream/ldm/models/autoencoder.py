"""KL-regularised autoencoder (the first stage of latent diffusion), inference only."""
import numpy as np
from mindspore import Parameter, Tensor, nn

from ...graph import GraphFunction
from ..modules.diffusionmodules.model import Decoder, Encoder
from ..modules.distributions.distributions import DiagonalGaussianDistribution
from ..modules.torch_layers import Conv2d, freeze


class AutoencoderKL(nn.Cell):
    """Parameter names equal the original's (``encoder.*``, ``decoder.*``,
    ``quant_conv.*``, ``post_quant_conv.*``), so the ``first_stage_model.`` part of a
    PyTorch checkpoint loads strictly.

    ``lossconfig`` is accepted and ignored: the training losses (LPIPS,
    discriminator) are out of scope, and MVDream's config uses ``torch.nn.Identity``.
    ``ema_decay``/``learn_logvar`` (training-only) are not supported.

    Its parameters never require grad. ``graph_mode`` runs the decoder as a static graph
    (``mvdream.graph``). The encoder stays in PyNative: it is differentiated (x0-SDS), and a
    graph's gradients are not reliable.
    """

    def __init__(self, ddconfig, embed_dim, lossconfig=None, ckpt_path=None, ignore_keys=(),
                 image_key="image", colorize_nlabels=None, monitor=None, ema_decay=None,
                 learn_logvar=False, graph_mode=True):
        super().__init__()
        if ema_decay is not None:
            raise NotImplementedError("AutoencoderKL: EMA weights are a training feature, not ported")
        assert ddconfig["double_z"], "the KL autoencoder needs double_z (mean and logvar)"
        self.image_key = image_key
        self.learn_logvar = learn_logvar
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        z_channels = ddconfig["z_channels"]
        self.quant_conv = Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = Conv2d(embed_dim, z_channels, 1)
        self.embed_dim = embed_dim
        vae = self

        def decode(z):  # a closure, not a bound method (see GraphFunction)
            return vae.decoder(vae.post_quant_conv(z))
        self.decode_graph = GraphFunction(decode, self, graph_mode)
        if colorize_nlabels is not None:
            assert isinstance(colorize_nlabels, int)
            # a buffer in the original (part of its state dict), hence a frozen parameter
            self.colorize = Parameter(Tensor(np.random.randn(3, colorize_nlabels, 1, 1).astype(np.float32)),
                                      name="colorize", requires_grad=False)
        if monitor is not None:
            self.monitor = monitor
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)
        # Inference only, as the original's first stage (which LatentDiffusion freezes): with
        # no weight requiring grad, the encoder's backward computes the input's gradient only.
        freeze(self)

    def init_from_ckpt(self, path, ignore_keys=()):
        """Load a PyTorch checkpoint non-strictly (as the original does), dropping keys
        that start with any of ``ignore_keys``."""
        from ...checkpoint import load_state_dict_into, read_torch_state_dict

        sd = read_torch_state_dict(path)
        sd = {k: v for k, v in sd.items() if not any(k.startswith(ik) for ik in ignore_keys)}
        load_state_dict_into(self, sd, strict=False, source=str(path))
        print(f"Restored from {path}")

    def encode(self, x):
        moments = self.quant_conv(self.encoder(x))  # (B, 2 * embed_dim, h, w)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z):
        return self.decode_graph(z)  # (B, out_ch, H, W)

    def construct(self, x, sample_posterior=True):
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def get_last_layer(self):
        return self.decoder.conv_out.weight

"""Inference interface of the latent diffusion model: UNet + VAE + text encoder
plus the DDPM schedule (MindSpore port of MVDream's ``LatentDiffusionInterface``).

Parameter names match the original state dict: ``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.*`` and the 12 schedule buffers at
top level (``betas``, ``alphas_cumprod``, ...; non-trainable Parameters here).
"""
import re
from collections import namedtuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from ..checkpoint import CheckpointError, load_state_dict_into
from .modules.diffusionmodules.schedule import DiffusionSchedule
from .util import instantiate_from_config

LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])

_TEXT = "cond_stage_model.model."
# Entries of the released checkpoint that a penultimate-layer text encoder never
# uses; a port may build the text tower without them.
_UNUSED_TEXT_KEYS = frozenset({_TEXT + "text_projection", _TEXT + "logit_scale"})
# Non-persistent buffer of the original (not in the file), in case the text
# encoder keeps it as a Parameter.
_NON_PERSISTENT = frozenset({_TEXT + "attn_mask"})
_RESBLOCK = re.compile(re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\.")


class DiffusionWrapper(nn.Cell):
    """Holds the UNet as ``diffusion_model`` (hence the ``model.diffusion_model.`` prefix)."""

    def __init__(self, diffusion_model):
        super().__init__()
        # Accept the built cell (as the original) or its config.
        if not isinstance(diffusion_model, nn.Cell):
            diffusion_model = instantiate_from_config(diffusion_model)
        self.diffusion_model = diffusion_model

    def construct(self, *args, **kwargs):
        return self.diffusion_model(*args, **kwargs)


class LatentDiffusionInterface(DiffusionSchedule):
    """LDM inference: conditioning, first-stage encode/decode, noise prediction,
    and (inherited from ``DiffusionSchedule``) q_sample / predict_* helpers."""

    def __init__(self, unet_config, cond_stage_config, first_stage_config, clip_stage_config=None,
                 parameterization="eps", scale_factor=0.18215, beta_schedule="linear", timesteps=1000,
                 linear_start=0.00085, linear_end=0.0120, cosine_s=8e-3, given_betas=None, *args, **kwargs):
        super().__init__(beta_schedule=beta_schedule, timesteps=timesteps, linear_start=linear_start,
                         linear_end=linear_end, cosine_s=cosine_s, given_betas=given_betas)
        self.model = DiffusionWrapper(unet_config)
        self.cond_stage_model = instantiate_from_config(cond_stage_config)
        self.first_stage_model = instantiate_from_config(first_stage_config)
        # Optional image-conditioning tower (not used by the text-to-multiview models).
        self.clip_stage_model = instantiate_from_config(clip_stage_config) if clip_stage_config else None
        if parameterization not in ("eps", "v", "x0"):
            raise ValueError(f"parameterization '{parameterization}' unknown (use eps, v or x0)")
        self.parameterization = parameterization
        self.scale_factor = scale_factor
        self.compute_dtype = ms.float32

    def set_dtype(self, dtype, cast_weights=False):
        """Run UNet, VAE and text encoder in ``dtype`` (e.g. float16, as the original's
        autocast). Norms and softmax run in float32 and the interface's inputs and
        outputs stay float32. ``cast_weights`` also stores the network weights in
        ``dtype`` (half the memory); the schedule buffers always stay float32."""
        if cast_weights:
            for cell in (self.model, self.first_stage_model, self.cond_stage_model):
                for param in cell.get_parameters():
                    param.set_dtype(dtype)
        self.compute_dtype = dtype
        self.model.diffusion_model.dtype = dtype
        self.cond_stage_model.dtype = dtype
        return self

    # ----------------------------------------------------------------- model
    def apply_model(self, x_noisy, t, cond, **kwargs):
        """UNet prediction; ``cond`` is a dict of UNet keyword arguments
        (``context``, ``camera``, ``num_frames``). A 1-element ``t`` is repeated
        over the batch."""
        if not isinstance(cond, dict):
            raise TypeError(f"cond must be a dict with context/camera/num_frames, got {type(cond).__name__}")
        # Keep a Tensor's own int dtype (the UNet only embeds it); ints/arrays become int64 like torch's.
        if not isinstance(t, Tensor):
            t = Tensor(np.asarray(t, dtype=np.int64).reshape(-1))
        elif t.ndim == 0:
            t = t.reshape(1)
        if t.shape[0] == 1 and x_noisy.shape[0] != 1:
            t = t.tile((x_noisy.shape[0],))
        return self.model(x_noisy, t, **cond, **kwargs)

    def construct(self, x_noisy, t, cond):
        return self.apply_model(x_noisy, t, cond)

    def get_learned_conditioning(self, prompts):
        """Text embeddings (B, 77, C) of a list of prompts."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.cond_stage_model.encode(list(prompts)).astype(ms.float32)

    # ------------------------------------------------------------ first stage
    @property
    def vae_downsampling_factor(self) -> int:
        """Image pixels per latent pixel (8 for the released models)."""
        return 2 ** (self.first_stage_model.encoder.num_resolutions - 1)

    def encode_first_stage(self, x):
        """The VAE posterior (a DiagonalGaussianDistribution) of images in [-1, 1]."""
        return self.first_stage_model.encode(x.astype(self.compute_dtype))

    def get_first_stage_encoding(self, encoder_posterior, noise=None):
        """scale_factor * (a posterior sample, or the given latent tensor).
        ``noise`` replaces the posterior's internal N(0, 1) draw."""
        if isinstance(encoder_posterior, Tensor):
            z = encoder_posterior
        elif hasattr(encoder_posterior, "sample"):
            z = encoder_posterior.sample(noise=noise)
        else:
            raise TypeError(f"encoder_posterior of type '{type(encoder_posterior).__name__}' is not supported")
        return (self.scale_factor * z).astype(ms.float32)

    def decode_first_stage(self, z):
        # Multiply by the reciprocal as the original does (not z / scale_factor).
        z = (1.0 / self.scale_factor) * z
        return self.first_stage_model.decode(z.astype(self.compute_dtype)).astype(ms.float32)

    # ----------------------------------------------------------- checkpoints
    def _allowed_drops(self, state_dict):
        """Checkpoint keys the model may leave unused: text_projection, logit_scale and,
        if the text tower was built without it, the whole last residual block."""
        own = {name for name, _ in self.parameters_and_names()}
        blocks = [int(m.group(1)) for k in state_dict for m in [_RESBLOCK.match(k)] if m]
        dropped_block = None
        if blocks:
            last = f"{_TEXT}transformer.resblocks.{max(blocks)}."
            if not any(name.startswith(last) for name in own):
                dropped_block = last

        def ignore(key):
            return key in _UNUSED_TEXT_KEYS or (dropped_block is not None and key.startswith(dropped_block))
        return ignore

    def load_state_dict(self, state_dict, strict=True, source="checkpoint"):
        """Load a full MVDream state dict (name -> array) into every sub-module.

        Strict by default: every parameter must be filled and every entry used,
        except the documented drops above (and the non-persistent ``attn_mask``).
        Returns ``LoadResult(missing_keys, unexpected_keys)`` net of those drops.
        """
        ignore = self._allowed_drops(state_dict)
        own = [name for name, _ in self.parameters_and_names()]
        missing = [k for k in own if k not in state_dict and k not in _NON_PERSISTENT]
        unexpected = [k for k in state_dict if k not in set(own) and not ignore(k)]
        try:
            load_state_dict_into(self, state_dict, strict=strict, ignore=ignore,
                                 allow_missing=_NON_PERSISTENT, source=source)
        except CheckpointError as err:
            raise CheckpointError(f"{err} (building the model from a different config than the checkpoint's?)") \
                from None
        return LoadResult(missing, unexpected)


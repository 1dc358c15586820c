"""Stand-ins for the UNet / VAE / text encoder with the real parameter names,
so the LDM interface, strict loading and build_model can be tested without the
real networks. Each stub creates one Parameter per key of the tiny model's key
list under its prefix, in a nested cell tree named like the PyTorch modules.
"""
from pathlib import Path

import numpy as np
from mindspore import Parameter, Tensor, nn

KEYS_TSV = Path(__file__).resolve().parent / "fixtures" / "parity" / "tiny_mvdream.keys.tsv"


def _keys(prefix, skip=()):
    out = []
    for line in KEYS_TSV.read_text().splitlines()[1:]:
        key, shape = line.split("\t")[:2]
        if key.startswith(prefix) and not any(key[len(prefix):].startswith(s) for s in skip):
            dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            out.append((key[len(prefix):], dims))
    return out


class _Node(nn.Cell):
    pass


class KeyedStub(nn.Cell):
    """A cell tree holding zero Parameters named like ``prefix``'s keys (minus ``skip``)."""

    def __init__(self, prefix, skip=()):
        super().__init__()
        for name, shape in _keys(prefix, skip):
            *path, leaf = name.split(".")
            node = self
            for part in path:
                if part not in node._cells:
                    node.insert_child_to_cell(part, _Node())
                node = node._cells[part]
            node.insert_param_to_cell(leaf, Parameter(Tensor(np.zeros(shape, np.float32)), name=leaf))


class StubUNet(KeyedStub):
    def __init__(self, **_config):
        super().__init__("model.diffusion_model.")
        self.last_call = None

    def construct(self, x, timesteps=None, context=None, camera=None, num_frames=1):
        self.last_call = dict(timesteps=timesteps, context=context, camera=camera, num_frames=num_frames)
        return x * 2


class _Posterior:
    def __init__(self, mean):
        self.mean = mean

    def sample(self, noise=None):
        return self.mean + (noise if noise is not None else 0)


class StubVAE(KeyedStub):
    def __init__(self, **_config):
        super().__init__("first_stage_model.")

    def encode(self, x):
        return _Posterior(x)

    def decode(self, z):
        return z


class StubText(nn.Cell):
    """``cond_stage_model`` with a ``model`` child; ``with_last_block=False``
    builds the text tower without its last residual block, text_projection and
    logit_scale, as a penultimate-layer port may."""

    def __init__(self, with_last_block=True, **_config):
        super().__init__()
        skip = () if with_last_block else ("transformer.resblocks.2.", "text_projection", "logit_scale")
        self.model = KeyedStub("cond_stage_model.model.", skip)

    def encode(self, prompts):
        return Tensor(np.full((len(prompts), 77, 4), float(len(prompts[0])), np.float32))

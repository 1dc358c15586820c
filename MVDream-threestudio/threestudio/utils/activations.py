"""Activation functions looked up by name, as threestudio's ``get_activation``."""
from typing import Callable, Optional

from mindspore import Tensor, nn, ops


class _TruncExp(nn.Cell):
    """exp(x) whose gradient uses exp(min(x, 15)): densities stay trainable without overflow."""

    def construct(self, x):
        return ops.exp(x)

    def bprop(self, x, out, dout):
        return (dout * ops.exp(ops.clamp(x, max=15.0)),)


trunc_exp = _TruncExp()


def softplus(x: Tensor) -> Tensor:
    return ops.softplus(x)


def lin2srgb(x: Tensor) -> Tensor:
    x = ops.clamp(x, min=0.0)
    srgb = ops.where(x > 0.0031308, 1.055 * ops.pow(ops.clamp(x, min=0.0031308), 1.0 / 2.4) - 0.055, 12.92 * x)
    return ops.clamp(srgb, 0.0, 1.0)


def _identity(x):
    return x


_ACTIVATIONS = {
    "none": _identity,
    "lin": _identity,
    "linear": _identity,
    "identity": _identity,
    "lin2srgb": lin2srgb,
    "exp": ops.exp,
    "shifted_exp": lambda x: ops.exp(x - 1.0),
    "trunc_exp": trunc_exp,
    "shifted_trunc_exp": lambda x: trunc_exp(x - 1.0),
    "sigmoid": ops.sigmoid,
    "tanh": ops.tanh,
    "relu": ops.relu,
    "softplus": softplus,
    "shifted_softplus": lambda x: softplus(x - 1.0),
    "scale_-11_01": lambda x: x * 0.5 + 0.5,
    "silu": ops.silu,
}


def get_activation(name: Optional[str]) -> Callable[[Tensor], Tensor]:
    """Name -> function; ``None`` and ``"none"`` are the identity (case-insensitive)."""
    if name is None:
        return _identity
    key = str(name).lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation function: {name}; known: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[key]

"""Autodiff helpers shared by renderer, guidance and estimators.

* ``no_grad()``: run MindSpore ops without recording them for a backward pass.
* ``Untaped``: call a function as one opaque op with zero gradients (nothing inside is taped).
* ``ChunkedVJP``: ``fn(x, aux)`` whose backward pass re-runs ``fn`` on ``chunk`` rows at a time.
"""
import mindspore as ms
from mindspore import nn, ops


def no_grad():
    """Context manager: ops inside record nothing for autodiff (PyNative).

    MindSpore 2.7.1 has no public equivalent of ``torch.no_grad``; ``ms._no_grad`` is the
    context manager its own optimizers use. Inside ``value_and_grad`` a plain forward still tapes
    every op (a full-size render or UNet call would keep GBs of activations), and
    ``ops.stop_gradient`` only cuts the gradient, not the tape. This is the only place that
    touches the private name, so a MindSpore upgrade changes one line.
    """
    return ms._no_grad()


class Untaped(nn.Cell):
    """Calls ``fn(*tensors) -> tuple of tensors`` as one opaque op for autodiff: a custom
    bprop (zero gradients) means PyNative records nothing inside, so activations are never
    kept for a backward pass that would not use them."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, *tensors):
        return self.fn(*tensors)

    def bprop(self, *args):
        return tuple(ops.zeros_like(x) for x in args[:-2])


class ChunkedVJP(nn.Cell):
    """``fn(x, aux)`` whose backward pass holds the activations of ``chunk`` rows of ``x`` at a
    time: nothing is taped in the forward, the backward re-runs ``fn`` on each chunk under
    ``mindspore.vjp``. Same values and gradients (w.r.t. ``x``) as plain autodiff; ``fn`` must
    act on rows independently and ``aux`` (same rows as ``x``) gets no gradient."""

    def __init__(self, fn, chunk: int):
        super().__init__()
        self.fn = fn
        self.chunk = chunk

    def construct(self, x, aux):
        return self.fn(x, aux)

    def bprop(self, x, aux, out, dout):
        grads = []
        for start in range(0, x.shape[0], self.chunk):
            part = slice(start, start + self.chunk)
            _, vjp_fn = ms.vjp(lambda x_: self.fn(x_, aux[part]), x[part])
            grads.append(vjp_fn(dout[part])[0])
        return ops.concat(grads, axis=0), ops.zeros_like(aux)

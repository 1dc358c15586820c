"""Pure-ops hash grid: integer index math + one gather + weighted sum over the 2^D corners.

Differentiable w.r.t. the table (gather's gradient scatters into it) and w.r.t. the inputs
(through the fractional position; the cell index is piecewise constant).

Layout choices (measured on CPU, 262k points, default grid): everything is level-major
([L, N, ...]) so that the gather and its scatter-add gradient walk one level's table at a
time (5-6x faster than point-major); the 2^D corners come from broadcasting the per-dim
(low, high) terms instead of a Python loop over corners.
"""
import mindspore as ms
from mindspore import Tensor, ops

from . import PRIMES, GridLayout, register_backend

_MASK32 = 0xFFFFFFFF  # tcnn computes indices in uint32 arithmetic


def _corner_axis(t, d, D):
    """[Lb, N, 2] per-dim term -> broadcastable [Lb, N, 1.., 2, ..1] on corner axis d."""
    shape = t.shape[:2] + tuple(2 if k == d else 1 for k in range(D))
    return t.reshape(shape)


@register_backend("ops")
class OpsHashGrid:
    name = "ops"

    @staticmethod
    def check_available():
        return True

    def __init__(self, layout: GridLayout):
        self.layout = layout
        D, self.F, self.L = layout.n_input_dims, layout.n_features_per_level, layout.n_levels
        self.D = D
        self.scale = Tensor(layout.scale[:, None, None])  # [L, 1, 1]
        self.bit = Tensor([0, 1], ms.int64)
        nd = layout.n_dense_levels
        self.blocks = []  # (lo, hi, hashed, per-dim multipliers [Lb,1,1], size, offset, mask)
        for lo, hi, hashed in ((0, nd, False), (nd, self.L, True)):
            if hi <= lo:
                continue
            if hashed:
                mult = [Tensor([[[p]]] * (hi - lo), ms.int64) for p in PRIMES[:D]]
                # Hashed levels have a power-of-two size: uint32 wrap + modulo is one AND.
                mask = Tensor(layout.size[lo:hi, None, None] - 1)
            else:
                mult = [Tensor(layout.strides[lo:hi, d, None, None]) for d in range(D)]
                mask = None
            size_shape = (hi - lo, 1) + (1,) * D
            self.blocks.append(dict(
                lo=lo, hi=hi, hashed=hashed, mult=mult, mask=mask,
                size=Tensor(layout.size[lo:hi].reshape(size_shape)),
                offset=Tensor(layout.offset[lo:hi].reshape(size_shape)),
            ))
        self.mask32 = Tensor(_MASK32, ms.int64)

    def _block_index(self, cell, block):
        """Table entries [Lb, N, 2, .., 2] of all corners for the levels of one block."""
        index = None
        for d in range(self.D):
            coord = cell[block["lo"]:block["hi"], :, d, None] + self.bit  # [Lb, N, 2]
            term = coord * block["mult"][d]
            if block["hashed"]:
                term = ops.bitwise_and(term, block["mask"])
            term = _corner_axis(term, d, self.D)
            if index is None:
                index = term
            elif block["hashed"]:
                index = ops.bitwise_xor(index, term)
            else:
                index = index + term
        if block["hashed"]:
            return index + block["offset"]
        return ops.bitwise_and(index, self.mask32) % block["size"] + block["offset"]

    def __call__(self, x, params):
        n = x.shape[0]
        pos = x[None] * self.scale + 0.5  # [L, N, D]
        cell = ops.floor(ops.stop_gradient(pos))
        frac = pos - cell  # the gradient w.r.t. x flows only through here
        cell = cell.astype(ms.int64)
        blocks = [self._block_index(cell, b) for b in self.blocks]
        index = blocks[0] if len(blocks) == 1 else ops.cat(blocks, axis=0)
        weight = None
        for d in range(self.D):
            f = frac[:, :, d, None]
            w = _corner_axis(ops.cat([1.0 - f, f], axis=-1), d, self.D)
            weight = w if weight is None else weight * w
        corners = 2 ** self.D
        index = index.reshape(self.L, n, corners).astype(ms.int32)
        weight = weight.reshape(self.L * n, 1, corners)
        values = ops.gather(params.reshape(-1, self.F), index, 0)  # [L, N, 2^D, F]
        out = ops.BatchMatMul()(weight, values.reshape(self.L * n, corners, self.F))  # [L*N, 1, F]
        # .contiguous() before reshape: reshaping a transposed view corrupts the heap in
        # MindSpore 2.7.1 PyNative on CPU (glibc "malloc_consolidate" abort at exit).
        out = out.reshape(self.L, n, self.F).transpose(1, 0, 2).contiguous()
        return out.reshape(n, self.L * self.F)

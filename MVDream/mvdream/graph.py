"""Frozen, never-differentiated forwards run as static graphs (``ms.jit``) in the PyNative program.

A compiled graph skips PyNative's per-op dispatch: on 2 CPU cores the ViT-H text encoder runs in
0.45x its PyNative time and the VAE decoder in 0.82x (README, "Notes for CPU runs").

Forward only. On MindSpore 2.7.1 the input gradient of a jit graph called from PyNative
autodiff is right on the first call and wrong from the second on (measured on the VAE encoder,
with and without the fused CPU kernels), so the differentiated VAE encoder stays in PyNative and
a graph's output is a constant to autodiff (``stop_gradient``).

MindSpore also binds a compiled graph to the storage its parameters had when it was compiled,
and to the Python values it read: after ``Parameter.set_data`` or ``set_dtype`` (a checkpoint
load, an fp16 cast) it would still compute with the old weights. :class:`GraphFunction` checks
the storage of its cell's parameters, and the values it depends on, at every call and compiles
again when they changed.
"""
from typing import Callable, Hashable, Optional

import mindspore as ms
from mindspore import Tensor, nn, ops


class GraphFunction:
    """``fn(*args)`` compiled by ``ms.jit`` (once per input signature), or ``fn`` itself when
    ``enabled`` is false; either way no gradient flows through it. ``args`` are tensors, or
    constants of the graph (``None``, ints) that are part of its signature.

    ``fn`` reads the parameters of ``cell`` and whatever ``depends_on()`` returns (e.g. a compute
    dtype): when either changes, the next call compiles a new graph. ``fn`` must be a plain
    function (a closure over the cell), not a bound method: MindSpore keys a bound method's graphs
    by its cell, so a new wrapper would find the old graph again.

    ``prepare()``, if given, runs before the first call and again, before compiling, whenever the
    parameters' storage or ``depends_on()`` changed.
    """

    def __init__(self, fn: Callable, cell: nn.Cell, enabled: bool = True,
                 depends_on: Optional[Callable[[], Hashable]] = None, prepare: Optional[Callable[[], None]] = None):
        self.fn = fn
        self.cell = cell
        self.enabled = enabled
        self.depends_on = depends_on or (lambda: None)
        self.prepare = prepare
        self._compiled = {}  # one ms.jit wrapper per input signature
        self._key = None

    @property
    def signatures(self):
        """The input signatures compiled for the current weights."""
        return list(self._compiled)

    def __call__(self, *args):
        if self.enabled or self.prepare is not None:
            key = (tuple(p.data_ptr() for p in self.cell.get_parameters()), self.depends_on())
            if key != self._key:
                self._compiled, self._key = {}, None
                if self.prepare is not None:
                    self.prepare()
                self._key = key
        if not self.enabled:
            return ops.stop_gradient(self.fn(*args))
        signature = tuple((a.shape, a.dtype) if isinstance(a, Tensor) else a for a in args)
        if signature not in self._compiled:
            self._compiled[signature] = ms.jit(self.fn)
        return ops.stop_gradient(self._compiled[signature](*args))

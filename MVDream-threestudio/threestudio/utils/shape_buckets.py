"""Round ragged sizes (packed samples, sampled grid cells) up to a small set of buckets.

PyNative keeps per-shape kernel and shape-inference caches that are never evicted, so a sample
count that changes every step grows the process by megabytes per step (3.4 MB per training
step on the tiny config, several GB over a 10k-step run) and, on Ascend, recompiles kernels.
Padding to one of ``per_octave`` sizes per power of two bounds the number of distinct shapes
at the cost of at most ``1 / per_octave`` extra rows.
"""
import numpy as np


def bucket_size(n: int, min_size: int = 64, per_octave: int = 8) -> int:
    """The smallest bucket >= ``n``: ``min_size`` or ``k * 2**e / per_octave`` with k in [per_octave, 2 per_octave)."""
    if n <= min_size:
        return min_size
    unit = max(1, (1 << (int(n).bit_length() - 1)) // per_octave)
    return -(-int(n) // unit) * unit


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with its last row repeated up to ``size`` rows (a valid input for any per-row op)."""
    missing = size - array.shape[0]
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


def call_bucketed(fn, rows: np.ndarray) -> np.ndarray:
    """``fn(rows)`` as a NumPy array, computed on ``rows`` padded to its bucket size (``fn`` is per
    row and may return a Tensor; the padding is cut off in NumPy, not by another ragged op)."""
    n = rows.shape[0]
    out = fn(pad_rows(rows, bucket_size(n)) if n else rows)
    out = out.asnumpy() if hasattr(out, "asnumpy") else np.asarray(out)
    return out[:n]

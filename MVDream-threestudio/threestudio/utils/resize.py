"""Bilinear resize of image batches as two matmuls (torch's ``F.interpolate(mode="bilinear")``)."""
from functools import lru_cache

import numpy as np
from mindspore import Tensor, ops


@lru_cache(maxsize=None)
def _bilinear_matrix(out_size: int, in_size: int) -> Tensor:
    """(out, in) matrix of 1-D bilinear resampling with ``align_corners=False`` (no
    antialiasing), i.e. exactly what torch's ``F.interpolate(mode="bilinear")`` does
    along one axis. A 2-D resize is then two matmuls: exact, differentiable, and free of
    backend-specific resize kernels."""
    scale = np.float32(in_size / out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    matrix = np.zeros((out_size, in_size), np.float32)
    np.add.at(matrix, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), hi), frac)
    return Tensor(matrix)


def resize_bilinear(images: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of (B, C, H, W) images to (B, C, height, width) (align_corners=False)."""
    in_h, in_w = images.shape[-2:]
    if (in_h, in_w) == (height, width):
        return images
    rows = _bilinear_matrix(height, in_h).astype(images.dtype)
    cols = _bilinear_matrix(width, in_w).astype(images.dtype)
    return ops.matmul(ops.matmul(rows, images), cols.T)

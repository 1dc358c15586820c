"""Writing results under a trial's ``save/`` dir (threestudio ``SaverMixin``, the parts used here).

``save_image_grid(filename, items)`` places images side by side in one PNG; each item is
``{"type": "rgb" | "grayscale", "img": array/Tensor, "kwargs": {...}}`` as in threestudio:
rgb takes ``data_format`` ("HWC"/"CHW") and ``data_range`` (default (0, 1)); grayscale takes
``data_range`` and ``cmap`` (None: gray, "jet" / "magma": a colour map).
``save_img_sequence`` turns ``<dir>/<i>.png`` frames into an mp4 (and/or gif).
"""
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import imageio.v2 as imageio
import numpy as np
from mindspore import Tensor


def free_name(path: str) -> str:
    """``path`` if nothing is there yet, else the first free ``<stem>-<n><ext>``."""
    if not os.path.lexists(path):
        return path
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.lexists(f"{stem}-{n}{ext}"):
        n += 1
    return f"{stem}-{n}{ext}"


def to_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.asnumpy()
    return np.asarray(x)


def _to_uint8(img: np.ndarray, data_range: Sequence[float]) -> np.ndarray:
    lo, hi = float(data_range[0]), float(data_range[1])
    img = (np.clip(img.astype(np.float32), lo, hi) - lo) / max(hi - lo, 1e-12)
    return np.round(img * 255.0).astype(np.uint8)


def _jet(x: np.ndarray) -> np.ndarray:
    """Matplotlib-like 'jet' on [0, 1] without matplotlib."""
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0, 1)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0, 1)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0, 1)
    return np.stack([r, g, b], -1)


def rgb_image(img, data_format: str = "HWC", data_range=(0, 1)) -> np.ndarray:
    img = to_numpy(img)
    if data_format == "CHW":
        img = img.transpose(1, 2, 0)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return _to_uint8(img[..., :3], data_range)


def grayscale_image(img, data_range=(0, 1), cmap: Optional[str] = None) -> np.ndarray:
    img = to_numpy(img).astype(np.float32)
    if img.ndim == 3:
        img = img[..., 0]
    lo, hi = data_range
    x = (np.clip(img, lo, hi) - lo) / max(hi - lo, 1e-12)
    if cmap is None:
        return np.repeat(_to_uint8(x[..., None], (0, 1)), 3, -1)
    if cmap in ("jet", "magma"):  # magma approximated by jet: only used for previews
        return _to_uint8(_jet(x), (0, 1))
    raise ValueError(f"unknown cmap '{cmap}'")


_RENDERERS = {"rgb": rgb_image, "grayscale": grayscale_image}


def image_grid(items: List[Dict[str, Any]]) -> np.ndarray:
    cols = [_RENDERERS[it["type"]](it["img"], **it.get("kwargs", {})) for it in items]
    height = max(c.shape[0] for c in cols)
    cols = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in cols]
    return np.concatenate(cols, axis=1)


class SaverMixin:
    _save_dir: Optional[str] = None

    def set_save_dir(self, save_dir: str):
        self._save_dir = save_dir

    def get_save_dir(self) -> str:
        if self._save_dir is None:
            raise ValueError("save dir not set (call set_save_dir)")
        return self._save_dir

    def get_save_path(self, filename: str) -> str:
        path = os.path.join(self.get_save_dir(), filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def save_image(self, filename: str, img: np.ndarray) -> str:
        path = self.get_save_path(filename)
        imageio.imwrite(path, img)
        return path

    def save_image_grid(self, filename: str, items: List[Dict[str, Any]], **_unused) -> str:
        return self.save_image(filename, image_grid(items))

    def save_img_sequence(self, filename: str, img_dir: str, matcher: str = r"(\d+)\.png",
                          save_format: str = "mp4", fps: int = 30, **_unused) -> List[str]:
        """Frames ``save/<img_dir>/<i>.png`` (sorted by i) -> ``save/<filename>.<fmt>`` for each format.

        Frames are streamed (one in memory at a time) into every writer; mp4 (H.264 via
        imageio-ffmpeg, yuv420p) needs even sizes, so odd frames get one replicated edge row or
        column. Each video is written to a temporary name, then renamed; an existing video is
        never replaced (the new one gets the next free ``-<n>`` name, and a log line says so).
        """
        directory = os.path.join(self.get_save_dir(), img_dir)
        pattern = re.compile(matcher)
        frames = sorted((int(m.group(1)), f) for f in os.listdir(directory) if (m := pattern.fullmatch(f)))
        formats = [save_format] if isinstance(save_format, str) else list(save_format)
        unknown = [f for f in formats if f not in ("mp4", "gif")]
        if unknown:
            raise ValueError(f"unknown video format '{unknown[0]}'")
        paths = [free_name(self.get_save_path(f"{filename}.{fmt}")) for fmt in formats]
        for path, fmt in zip(paths, formats):
            if not path.endswith(f"{filename}.{fmt}"):
                logging.getLogger("threestudio").warning("%s.%s exists; writing %s instead", filename, fmt, path)
        tmps = [os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.tmp.{fmt}") for p, fmt in zip(paths, formats)]
        writers = []
        try:
            for tmp, fmt in zip(tmps, formats):
                if fmt == "mp4":
                    # macro_block_size=1: keep the frame size (no resize to multiples of 16)
                    writers.append(imageio.get_writer(tmp, format="FFMPEG", fps=fps, macro_block_size=1,
                                                      codec="libx264", pixelformat="yuv420p"))
                else:
                    writers.append(imageio.get_writer(tmp, format="GIF", mode="I", duration=1000.0 / fps, loop=0))
            for _, name in frames:
                img = imageio.imread(os.path.join(directory, name))
                if img.ndim == 2:
                    img = np.repeat(img[..., None], 3, -1)
                img = img[..., :3]
                for writer, fmt in zip(writers, formats):
                    writer.append_data(_even(img) if fmt == "mp4" else img)
            for writer in writers:
                writer.close()
            writers = []
            for tmp, path in zip(tmps, paths):
                os.replace(tmp, path)
        finally:
            for writer in writers:
                writer.close()
            for tmp in tmps:
                if os.path.exists(tmp):
                    os.remove(tmp)
        return paths


def _even(img: np.ndarray) -> np.ndarray:
    pad = ((0, img.shape[0] % 2), (0, img.shape[1] % 2), (0, 0))
    return np.pad(img, pad, mode="edge") if any(p[1] for p in pad) else img

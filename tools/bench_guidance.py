"""Benchmark one multiview x0-SDS guidance step (render -> resize -> VAE encode -> UNet with
CFG -> loss -> backward through the VAE to the render), with random weights.

    PYTHONPATH=MVDream:MVDream-threestudio python tools/bench_guidance.py [--tiny] [--iters 2]

Full size (default): ``sd-v2.1-base-4view`` built with ``pretrained=False`` (1.3B parameters,
~5.2 GB fp32; nothing downloaded), guidance ``image_size`` 256, at the two MVDream training
settings: 64x64 renders, batch 8 (2 groups of 4 views; UNet batch 16 with CFG) and 256x256
renders, batch 4; in fp32 and fp16 (``half_precision_weights``). This needs ~20 GB of RAM and
minutes per step on a 2-core CPU: do not run it next to other heavy jobs.
``--tiny``: the tiny model config shipped with mvdream (image_size 16, renders 8x8 batch 8 and
16x16 batch 4), to check that the tool works.

Prints one JSON line per setting: seconds per step split into VAE encode (forward), UNet
(CFG forward, both halves), the rest of the forward, and backward; plus the process's peak
RSS so far (settings run from small to large).
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MVDream"), str(ROOT / "MVDream-threestudio")]

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import Parameter, Tensor, ops  # noqa: E402

import threestudio  # noqa: E402
from mvdream.camera_utils import get_camera  # noqa: E402


def _sync():
    """Wait for queued device work (CPU PyNative with MS_DEV_HOST_BLOCKING_RUN=1 is already synchronous)."""
    if ms.get_context("device_target") != "CPU":
        ms.runtime.synchronize()


class Timer:
    """Accumulates the wall time of wrapped callables (synchronised before stopping)."""

    def __init__(self):
        self.seconds = {}

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            return out
        return timed


def build_guidance(tiny, fp16):
    cfg = {"pretrained": False, "half_precision_weights": fp16, "seed": 0}
    if tiny:
        cfg.update(model_name=None, config_path="tiny.yaml", image_size=16)  # a config shipped with mvdream
    start = time.perf_counter()
    guidance = threestudio.find("multiview-diffusion-guidance")(cfg)
    return guidance, time.perf_counter() - start


def bench(guidance, size, batch, iters, warmup):
    rng = np.random.default_rng(0)
    n_view = guidance.cfg.n_view
    render = Parameter(Tensor(rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)), name="render")
    text = guidance.encode_text(["a bench", ""])
    text_embeddings = ops.concat([ops.broadcast_to(text[:1], (batch,) + text.shape[1:]),
                                  ops.broadcast_to(text[1:], (batch,) + text.shape[1:])], axis=0)
    cams = get_camera(n_view).asnumpy().reshape(n_view, 4, 4)
    c2w = Tensor(np.tile(cams, (batch // n_view, 1, 1)))

    timer = Timer()
    model = guidance.model
    originals = {"encode_first_stage": model.encode_first_stage}
    model.encode_first_stage = timer.wrap("vae_encode_s", model.encode_first_stage)
    originals_g = {"compute_target": guidance.compute_target}
    guidance.compute_target = timer.wrap("unet_s", guidance.compute_target)

    def loss_fn(rgb):
        start = time.perf_counter()
        loss = guidance(rgb, None, None, None, None, c2w, text_embeddings=text_embeddings)["loss_sds"]
        _sync()
        timer.seconds["forward_s"] = timer.seconds.get("forward_s", 0.0) + time.perf_counter() - start
        forward_split.update(timer.seconds)  # a chunked VAE backward encodes again: that is backward time
        return loss
    forward_split = {}
    grad_fn = ms.grad(loss_fn)
    rows = []
    try:
        for it in range(warmup + iters):
            timer.seconds = {}
            forward_split.clear()
            start = time.perf_counter()
            grad = grad_fn(render)
            grad.asnumpy()
            total = time.perf_counter() - start
            if it >= warmup:
                s = forward_split
                rows.append({"total_s": total, "vae_encode_s": s["vae_encode_s"], "unet_s": s["unet_s"],
                             "other_forward_s": s["forward_s"] - s["vae_encode_s"] - s["unet_s"],
                             "backward_s": total - s["forward_s"]})
    finally:  # instance attributes shadow the methods: remove them
        for name in originals:
            delattr(model, name)
        for name in originals_g:
            delattr(guidance, name)
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model config (tool check)")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "fp16", "both"], default="both")
    args = parser.parse_args()
    from mvdream.runtime import setup_runtime

    setup_runtime("CPU")
    settings = [(8, 8), (16, 4)] if args.tiny else [(64, 8), (256, 4)]
    precisions = {"fp32": [False], "fp16": [True], "both": [False, True]}[args.precision]
    for fp16 in precisions:
        guidance, build_s = build_guidance(args.tiny, fp16)
        for size, batch in settings:
            result = bench(guidance, size, batch, args.iters, args.warmup)
            peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
            print(json.dumps({"model": "tiny" if args.tiny else "sd-v2.1-base-4view (random)",
                              "precision": "fp16" if fp16 else "fp32", "render": f"{size}x{size}", "batch": batch,
                              "image_size": guidance.cfg.image_size, "build_s": round(build_s, 2),
                              **{k: round(v, 3) for k, v in result.items()},
                              "peak_rss_gb": round(peak_gb, 2)}), flush=True)
        del guidance


if __name__ == "__main__":
    main()

"""Speed and memory of the full-size MVDream model (random weights) on this machine.

    python tools/bench_mvdream.py                   # every case
    python tools/bench_mvdream.py --cases unet ddim --dtypes fp32 fp16 --repeats 2

Each case runs in its own process so that its peak resident memory is its own. The cases
are those of the side-by-side harness against the PyTorch original (``../shared/perf``,
whose driver gives the MindSpore/PyTorch ratios), for the project alone:
  build     build the whole model (UNet + VAE + text; fp16: weights stored in fp16), seconds and peak RSS
  unet      UNet forward, batch 8 = 4 views x CFG 2, 32x32 latents (256 px)
  vae       VAE encode (posterior sample x 0.18215), loss sum(z * w), backward to the image, 4 x 256^2
  ddim      one DDIM step of t2i (CFG batch of 8, 4 views at 256x256), full pipeline
  text      text encoder on 2 prompts (incl. tokenisation)
  decode    VAE decoder, 4 latents 32x32 -> 4 x 256^2 (t2i's last step)
  graph     text and decode, graph mode (the default) against PyNative (graph_mode=False), calls
            alternating in one process; prints each side's median and their ratio
  hashgrid  hash grid (16 levels x 2, 2^19, base 16) forward + backward to the table, 2^20 points
  layers    single layers at UNet shapes, the text encoder's widest Linear both ways (few_rows:
            oneDNN's sgemm on CPU, against MindSpore's MatMul), and 3x3 convolutions at the VAE's
            and the UNet's shapes both ways (oneDNN's direct convolution, the CPU default, against
            MindSpore's Conv2D), forward and frozen forward + input gradient; fp32 only, median of
            5 calls each, seconds per call
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["an astronaut riding a horse, 3d asset", ""]  # the text cases' 2 prompts
sys.path[:0] = [str(REPO / "MVDream"), str(REPO / "MVDream-threestudio")]  # this checkout first


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _model_config():
    from omegaconf import OmegaConf
    from mvdream.model_zoo import get_config_file
    return OmegaConf.load(get_config_file("sd-v2-base.yaml")).model.params


def run_case(case, dtype_name, repeats):
    """Runs inside the child process; returns a result dict."""
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor
    from mvdream.ldm.util import instantiate_from_config
    from mvdream.model_zoo import build_model

    dtype = ms.float16 if dtype_name == "fp16" else ms.float32
    rng = np.random.default_rng(0)
    result = {"case": case, "dtype": dtype_name}
    start = time.perf_counter()
    if case == "build":
        model = build_model("sd-v2.1-base-4view", pretrained=False,
                            weights_dtype=dtype if dtype is ms.float16 else None)
        result["seconds"] = [time.perf_counter() - start]
    elif case == "unet":
        unet = instantiate_from_config(_model_config().unet_config)
        unet.dtype = dtype
        unet.set_train(False)
        from mvdream.camera_utils import get_camera
        x = Tensor(rng.standard_normal((8, 4, 32, 32)).astype(np.float32))
        t = Tensor(np.full((8,), 500, np.int64))
        context = Tensor(rng.standard_normal((8, 77, 1024)).astype(np.float32))
        camera = ms.ops.tile(get_camera(4, elevation=15, azimuth_start=90), (2, 1))
        result["seconds"] = _timed(lambda: unet(x, t, context=context, camera=camera, num_frames=4).asnumpy(),
                                   repeats)
    elif case == "vae":
        vae = instantiate_from_config(_model_config().first_stage_config)
        vae.set_train(False)
        image = Tensor(rng.uniform(-1, 1, (4, 3, 256, 256)).astype(np.float32))
        noise = Tensor(rng.standard_normal((4, 4, 32, 32)).astype(np.float32))
        weight = Tensor(rng.standard_normal((4, 4, 32, 32)).astype(np.float32))

        def encode(img):
            z = 0.18215 * vae.encode(img.astype(dtype)).sample(noise=noise.astype(dtype))
            return (z.astype(ms.float32) * weight).sum()
        grad_fn = ms.grad(encode)
        result["seconds"] = _timed(lambda: grad_fn(image).asnumpy(), repeats)
    elif case == "text":
        text = instantiate_from_config(_model_config().cond_stage_config)
        text.dtype = dtype
        result["seconds"] = _timed(lambda: text.encode(PROMPTS).asnumpy(), repeats)
    elif case == "decode":
        vae = instantiate_from_config(_model_config().first_stage_config)
        vae.set_train(False)
        z = Tensor(rng.standard_normal((4, 4, 32, 32)).astype(np.float32)).astype(dtype)
        result["seconds"] = _timed(lambda: vae.decode(z).asnumpy(), repeats)
    elif case == "graph":
        result.update(_graph_against_pynative(rng, max(repeats, 3)))
        result["seconds"] = [0.0]
    elif case == "ddim":
        from mvdream.camera_utils import get_camera
        from mvdream.ldm.models.diffusion.ddim import DDIMSampler
        model = build_model("sd-v2.1-base-4view", pretrained=False,
                            weights_dtype=dtype if dtype is ms.float16 else None)
        model.set_train(False)
        sampler = DDIMSampler(model)
        camera = get_camera(4, elevation=15, azimuth_start=90)
        c = model.get_learned_conditioning(["an astronaut riding a horse, 3d asset"] * 4)
        uc = model.get_learned_conditioning([""] * 4)
        cond = {"context": c, "camera": camera, "num_frames": 4}
        uncond = {"context": uc, "camera": camera, "num_frames": 4}
        sampler.make_schedule(50)
        x = Tensor(rng.standard_normal((4, 4, 32, 32)).astype(np.float32))
        t = Tensor(np.full((4,), int(sampler.ddim_timesteps[-1]), np.int64))
        result["seconds"] = _timed(
            lambda: sampler.p_sample_ddim(x, cond, t, 49, 10.0, uncond)[0].asnumpy(), repeats)
    elif case == "hashgrid":
        from threestudio.models.networks import get_encoding
        enc = get_encoding(3, dict(otype="HashGrid", n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                                   base_resolution=16, per_level_scale=1.447269237440378)).encoding
        x = Tensor(rng.uniform(0, 1, (1 << 20, 3)).astype(np.float32))
        g = Tensor(rng.standard_normal((1 << 20, 32)).astype(np.float32))
        grad_fn = ms.grad(lambda params: (enc.backend(x, params) * g).sum())
        result["backend"] = enc.backend.name
        result["seconds"] = _timed(lambda: grad_fn(enc.params).asnumpy(), repeats)
    elif case == "layers":
        result["layers"] = _layers(rng)
        result["seconds"] = [0.0]
    else:
        raise ValueError(f"unknown case {case}")
    result["median_s"] = statistics.median(result["seconds"])
    result["peak_rss_gb"] = _peak_rss_gb()
    return result


def _graph_against_pynative(rng, repeats):
    """Median seconds per call of the graph-mode frozen forwards and of the same in PyNative,
    timed A B A B in this process after one warm-up (compile) call each."""
    import numpy as np
    from mindspore import Tensor
    from omegaconf import OmegaConf
    from mvdream.ldm.util import instantiate_from_config

    cfg = _model_config()
    z = Tensor(rng.standard_normal((4, 4, 32, 32)).astype(np.float32))
    cases = {"text": (cfg.cond_stage_config, lambda m: m.encode(PROMPTS)),
             "decode": (cfg.first_stage_config, lambda m: m.decode(z))}
    rows = {}
    for name, (section, call) in cases.items():
        models = {mode: instantiate_from_config(OmegaConf.merge(section, {"params": {"graph_mode": mode}}))
                  for mode in (True, False)}
        for model in models.values():
            model.set_train(False)
            call(model).asnumpy()  # warm-up: the graph side compiles here
        times = {True: [], False: []}
        for _ in range(repeats):
            for mode, model in models.items():
                start = time.perf_counter()
                call(model).asnumpy()
                times[mode].append(time.perf_counter() - start)
        graph, eager = statistics.median(times[True]), statistics.median(times[False])
        rows[name] = {"graph_s": round(graph, 4), "pynative_s": round(eager, 4), "ratio": round(graph / eager, 3)}
    return rows


def _without_cpu_kernels(build):
    """``build()`` with the CPU kernels off: the layer then holds MindSpore's own ops."""
    saved = os.environ.get("MVDREAM_CPU_KERNELS")
    os.environ["MVDREAM_CPU_KERNELS"] = "0"
    try:
        return build()
    finally:
        if saved is None:
            del os.environ["MVDREAM_CPU_KERNELS"]
        else:
            os.environ["MVDREAM_CPU_KERNELS"] = saved


def _layers(rng):
    """Seconds per call (median of 5 after a warm-up) of the project's layers at UNet shapes and of
    the text encoder's c_fc (2 prompts x 77 tokens, 1024 -> 4096) with and without ``few_rows``."""
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor
    from mvdream.ldm.modules.attention import GEGLU
    from mvdream.ldm.modules.torch_layers import GELU, Conv2d, GroupNorm, LayerNorm, Linear, freeze

    x4 = Tensor(rng.standard_normal((8, 320, 32, 32)).astype(np.float32))
    x3 = Tensor(rng.standard_normal((2, 4096, 320)).astype(np.float32))
    xg = Tensor(rng.standard_normal((2, 4096, 1280)).astype(np.float32))
    gn, ln, lin, gelu, geglu = GroupNorm(32, 320), LayerNorm(320), Linear(320, 2560), GELU(), GEGLU(320, 1280)
    gn_grad = ms.grad(lambda x: (gn(x, silu=True) * x4).sum())
    xt = Tensor(rng.standard_normal((154, 1024)).astype(np.float32))
    text_fc = {few_rows: Linear(1024, 4096, few_rows=few_rows) for few_rows in (True, False)}
    cases = {
        "groupnorm (8,320,32,32)": lambda: gn(x4),
        "groupnorm+silu (8,320,32,32)": lambda: gn(x4, silu=True),
        "groupnorm+silu fwd+bwd (8,320,32,32)": lambda: gn_grad(x4),
        "layernorm (2,4096,320)": lambda: ln(x3),
        "linear 8192x320->2560": lambda: lin(x3),
        "gelu_erf (2,4096,1280)": lambda: gelu(xg),
        "geglu 8192x320->2x1280": lambda: geglu(x3),
        "linear 154x1024->4096 few_rows": lambda: text_fc[True](xt),
        "linear 154x1024->4096 MatMul": lambda: text_fc[False](xt),
    }
    for shape in ((4, 128, 256, 256), (8, 320, 32, 32)):
        x = Tensor(rng.standard_normal(shape).astype(np.float32))
        for path, conv in (("oneDNN direct", Conv2d(shape[1], shape[1], 3, padding=1)),
                           ("Conv2D", _without_cpu_kernels(lambda: Conv2d(shape[1], shape[1], 3, padding=1)))):
            freeze(conv)
            grad = ms.grad(lambda t, conv=conv, x=x: (conv(t) * x).sum())
            cases[f"conv3x3 {shape} {path}"] = lambda conv=conv, x=x: conv(x)
            cases[f"conv3x3 fwd+input grad {shape} {path}"] = lambda grad=grad, x=x: grad(x)
    rows = {}
    for name, fn in cases.items():
        times = _timed(lambda: fn().asnumpy(), 5)
        rows[name] = round(statistics.median(times), 4)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cases = ["build", "unet", "vae", "ddim", "text", "decode", "graph", "hashgrid", "layers"]
    parser.add_argument("--cases", nargs="+", default=cases, choices=cases)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="CPU kernel threads (default: all cores)")
    parser.add_argument("--device_target", default="CPU")
    parser.add_argument("--_child", nargs=2, metavar=("CASE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        from mvdream.runtime import setup_runtime
        setup_runtime(args.device_target, args.threads)
        print(json.dumps(run_case(args._child[0], args._child[1], args.repeats)))
        return

    print(f"{'case':8} {'dtype':5} {'median s':>9} {'runs':>22} {'peak RSS GB':>11}  load")
    for case in args.cases:
        for dtype in args.dtypes:
            if case in ("graph", "hashgrid", "layers") and dtype != "fp32":
                continue
            load = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--_child", case, dtype, "--repeats", str(args.repeats),
                   "--device_target", args.device_target]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or not lines:
                print(f"{case:6} {dtype:5} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            res = json.loads(lines[-1])
            runs = ",".join(f"{s:.2f}" for s in res["seconds"])
            print(f"{case:8} {dtype:5} {res['median_s']:9.2f} {runs:>22} {res['peak_rss_gb']:11.2f}  {load:.1f}",
                  flush=True)
            for name, seconds in res.get("layers", {}).items():
                print(f"    {name:40} {seconds:.4f} s")
            for name in ("text", "decode") if case == "graph" else ():
                row = res[name]
                print(f"    {name:8} graph {row['graph_s']:.3f} s, PyNative {row['pynative_s']:.3f} s, "
                      f"graph / PyNative {row['ratio']:.3f}")


if __name__ == "__main__":
    main()

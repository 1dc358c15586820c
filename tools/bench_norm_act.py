"""The fused CPU kernels (``mvdream/kernels/norm_act.cc``) called raw (no MindSpore dispatch) at
model shapes: this checkout's source against another revision's, interleaved A B A B.

    python tools/bench_norm_act.py                        # this checkout vs main
    python tools/bench_norm_act.py --against-rev HEAD~3 --repeats 9 --threads 2
    python tools/bench_norm_act.py --quick                # small shapes (seconds)

Prints one JSON row per kernel and shape: the median wall and process-CPU milliseconds of each
side and whether their outputs are bitwise equal. Numbers only; on a shared machine compare the
CPU times.
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path("MVDream/mvdream/kernels/norm_act.cc")
sys.path[:0] = [str(REPO / "MVDream")]  # this checkout first


def _call(lib, name, inputs, out_shapes):
    """Run kernel ``name`` of ``lib`` the way ops.Custom(func_type="aot") does; its outputs."""
    arrays = [np.ascontiguousarray(a) for a in inputs] + [np.empty(s, np.float32) for s in out_shapes]
    n = len(arrays)
    shapes = [(ctypes.c_int64 * max(a.ndim, 1))(*a.shape) for a in arrays]
    rc = getattr(lib, name)(n, (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays]),
                            (ctypes.c_int * n)(*[a.ndim for a in arrays]),
                            (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64))
                                                                   for s in shapes]), None, None, None)
    if rc != 0:
        raise RuntimeError(f"{name} returned {rc}")
    return arrays[len(inputs):]


def _cases(quick, rng):
    """(label, kernel, inputs, output shapes) at the UNet / VAE / text encoder shapes."""
    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    group = [(2, 64, 8, 8)] if quick else [(8, 320, 32, 32), (1, 128, 256, 256), (4, 512, 32, 32)]
    rows = [(64, 96)] if quick else [(8192, 320), (154, 1024)]
    gelu = (4, 300) if quick else (2, 4096, 1280)
    cases = []
    for shape in group:
        x, dy, g = f32(*shape), f32(*shape), f32(shape[1])
        cfg = np.array([32, 1e-5, 1.0], np.float32)
        cases.append((f"group_norm_silu{list(shape)}", "group_norm_fwd", [x, g, g, cfg], [shape]))
        cases.append((f"group_norm_silu{list(shape)}", "group_norm_bwd", [x, g, g, cfg, dy],
                      [shape, (shape[1],), (shape[1],)]))
    for shape in rows:
        x, dy, g = f32(*shape), f32(*shape), f32(shape[1])
        cfg = np.array([1e-5], np.float32)
        cases.append((f"layer_norm{list(shape)}", "layer_norm_fwd", [x, g, g, cfg], [shape]))
        cases.append((f"layer_norm{list(shape)}", "layer_norm_bwd", [x, g, g, cfg, dy], [shape, (shape[1],), (shape[1],)]))
    x, dy = f32(*gelu), f32(*gelu)
    half = gelu[:-1] + (gelu[-1] // 2,)
    cases.append((f"gelu{list(gelu)}", "gelu_fwd", [x], [gelu]))
    cases.append((f"gelu{list(gelu)}", "gelu_bwd", [x, dy], [gelu]))
    cases.append((f"geglu{list(gelu)}", "geglu_fwd", [x], [half]))
    cases.append((f"geglu{list(gelu)}", "geglu_bwd", [x, dy[..., :gelu[-1] // 2]], [gelu]))
    return cases


def _git(*args):
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def _files_at(rev):
    """``{name: text}`` of norm_act.cc and the headers it may include (those beside it) at
    ``rev``, or None when ``rev`` has no norm_act.cc."""
    source = _git("show", f"{rev}:{SOURCE.as_posix()}")
    if source is None:
        return None
    files = {SOURCE.name: source}
    for path in (_git("ls-tree", "--name-only", rev, f"{SOURCE.parent.as_posix()}/") or "").split():
        if path.endswith(".h"):
            files[Path(path).name] = _git("show", f"{rev}:{path}")
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against-rev", default="main", help="git revision whose norm_act.cc is side B")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads of both sides")
    parser.add_argument("--quick", action="store_true", help="small shapes")
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        sys.exit("error: --repeats and --threads must be >= 1")
    other = _files_at(args.against_rev)
    if other is None:
        sys.exit(f"error: no {SOURCE} at revision {args.against_rev!r}; pass an existing one with --against-rev")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before libgomp starts in this process

    from mvdream.kernels.build import build_library

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in other.items():
            (Path(tmp) / name).write_text(text)
        theirs = Path(tmp) / SOURCE.name
        libs = {"this": ctypes.CDLL(build_library(REPO / SOURCE)),
                args.against_rev: ctypes.CDLL(build_library(theirs))}
        for label, kernel, inputs, outs in _cases(args.quick, np.random.default_rng(0)):
            times = {side: [] for side in libs}
            results = {}
            for _ in range(args.repeats + 1):  # the first round warms up
                for side, lib in libs.items():
                    wall, cpu = time.perf_counter(), time.process_time()
                    results[side] = _call(lib, kernel, inputs, outs)
                    times[side].append((time.perf_counter() - wall, time.process_time() - cpu))
            a, b = results.values()
            row = {"kernel": kernel, "shape": label, "bitwise_equal": all(np.array_equal(x, y) for x, y in zip(a, b))}
            for side, ts in times.items():
                row[f"{side}_wall_ms"] = round(float(np.median([t[0] for t in ts[1:]])) * 1e3, 3)
                row[f"{side}_cpu_ms"] = round(float(np.median([t[1] for t in ts[1:]])) * 1e3, 3)
            print(json.dumps(row), flush=True)
    print(json.dumps({"load_average": [round(v, 2) for v in os.getloadavg()], "threads": args.threads}))


if __name__ == "__main__":
    main()

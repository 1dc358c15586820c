"""Forward+backward time of the hash grid encoding for each available backend.

    python tools/bench_hashgrid.py [--n 262144] [--repeat 3]

Uses threestudio's default implicit-volume grid (16 levels x 2 features, 2^19 entries,
base 16, per-level scale 1.447). The loss is sum(enc * g) so both the table gradient
and (with --input-grad) the input gradient are computed.
"""
import argparse
import os
import sys
import time

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", name)
                for name in ("MVDream", "MVDream-threestudio")]

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from threestudio.models import hashgrid  # noqa: E402
from threestudio.models.networks import get_encoding  # noqa: E402

DEFAULT = dict(otype="HashGrid", n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
               base_resolution=16, per_level_scale=1.447269237440378)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=262144)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--input-grad", action="store_true", help="also differentiate w.r.t. the points")
    args = parser.parse_args()
    from mvdream.runtime import setup_runtime

    setup_runtime("CPU")
    enc = get_encoding(3, DEFAULT).encoding
    rng = np.random.default_rng(0)
    x = Tensor(rng.uniform(0, 1, (args.n, 3)).astype(np.float32))
    g = Tensor(rng.normal(size=(args.n, enc.n_output_dims)).astype(np.float32))
    positions = (0, 1) if args.input_grad else (1,)
    for name in hashgrid.available_backends():
        enc.set_implementation(name)
        fn = ms.value_and_grad(lambda pts, params: (enc.backend(pts, params) * g).sum(), grad_position=positions)
        fwd_times, times = [], []
        for _ in range(args.repeat + 1):  # first run warms up (compilation, allocations)
            t0 = time.perf_counter()
            enc.backend(x, enc.params).asnumpy()
            t1 = time.perf_counter()
            _, grads = fn(x, enc.params)
            (grads[-1] if isinstance(grads, tuple) else grads).asnumpy()
            t2 = time.perf_counter()
            fwd_times.append(t1 - t0)
            times.append(t2 - t1)
        print(f"{name:>4}: N={args.n} fwd {np.median(fwd_times[1:]):.3f} s, fwd+bwd {np.median(times[1:]):.3f} s"
              f"{' (with input grad)' if args.input_grad else ''}")


if __name__ == "__main__":
    main()

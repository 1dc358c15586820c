"""Forward+backward time of the hash grid encoding (the `hashgrid` case of ../shared/perf).

    python tools/bench_hashgrid.py [--n 1048576] [--repeat 3] [--backend auto|ops|cpp|all] [--input-grad]

Uses threestudio's default implicit-volume grid (16 levels x 2 features, 2^19 entries,
base 16, per-level scale 1.447) on N points uniform in [0, 1]^3. One call is what the perf
harness times: loss sum(enc(x) * g) with a fixed random g, value and gradient w.r.t. the table
(with --input-grad also w.r.t. the points). The first call warms up; the median of the others is
printed. `auto` is the backend the project picks here (the C++ kernel on CPU); `all` times
every available backend one after the other (the pure-ops one needs ~12 GB at the default N).
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
    parser.add_argument("--n", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", default="auto", help="auto (the project's choice), ops, cpp or all")
    parser.add_argument("--input-grad", action="store_true", help="also differentiate w.r.t. the points")
    args = parser.parse_args()
    from mvdream.runtime import setup_runtime

    setup_runtime("CPU")
    enc = get_encoding(3, dict(DEFAULT, backend="auto" if args.backend == "all" else args.backend)).encoding
    rng = np.random.default_rng(0)
    x = Tensor(rng.uniform(0, 1, (args.n, 3)).astype(np.float32))
    g = Tensor(rng.normal(size=(args.n, enc.n_output_dims)).astype(np.float32))
    positions = (0, 1) if args.input_grad else (1,)
    names = hashgrid.available_backends() if args.backend == "all" else [enc.backend.name]
    for name in names:
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
              f"{' (with input grad)' if args.input_grad else ''}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Data-parallel step time of the tiny config at 1 and 2 ranks, each rank bound to one core.

    PYTHONPATH=MVDream:MVDream-threestudio python tools/bench_msrun.py [--steps 6] [--rounds 2]

configs/mvdream-tiny.yaml with 2 view groups (batch 8, 32x32): rank counts alternate (1, 2, 1, 2
...) in one run. 1 rank is a plain process on core 0; 2 ranks run under ``msrun`` on loopback,
rank r on core r, MindSpore limited to one thread. Each rank times real training steps
(``Trainer.train_step`` with the AllReduce gradient reducer of launch.py) after 2 warm-up steps,
and the time spent in the reducer (one AllReduce of loss, stop flag and gradients; it also waits for the
slower rank). Then it times the bare AllReduce of a buffer of the same size, right after a
synchronising AllReduce (the communication cost itself), and of a buffer the size of the full
config's trainable state (mvdream-sd21.yaml: 12.6M values, 50 MB). One JSON line per (round, ranks).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "MVDream-threestudio" / "configs" / "mvdream-tiny.yaml"
# trainable values of configs/mvdream-sd21.yaml (hash grid 12,604,272 + background 448) + the loss
FULL_SIZE_VALUES = 12_604_721
OVERRIDES = ['system.prompt_processor.prompt="a bench"', "data.batch_size=[8,8]", "trainer.enable_progress_bar=false"]


def worker(steps: int):
    """One rank (plain process or msrun worker): prints a JSON line on rank 0."""
    # bind before MindSpore starts its threads (they inherit it); msrun exports RANK_ID on one node
    os.sched_setaffinity(0, {int(os.environ.get("RANK_ID", "0")) % (os.cpu_count() or 1)})
    sys.path[:0] = [str(ROOT / "MVDream"), str(ROOT / "MVDream-threestudio")]
    import random

    import mindspore as ms
    import numpy as np

    import threestudio
    from mvdream.ranks import join_msrun
    from mvdream.runtime import setup_runtime
    from threestudio.utils.distributed import GradMeanAllReduce
    from threestudio.utils.experiment import checkpoint_config, load_experiment, trainer_config
    from threestudio.utils.trainer import Trainer

    setup_runtime("CPU", threads=1)
    ranks = join_msrun()
    cfg, _, _ = load_experiment(str(TINY), OVERRIDES)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    ms.set_seed(cfg.seed)
    dm = threestudio.find(cfg.data_type)(cfg.data, seed=cfg.seed, rank=ranks.rank, world_size=ranks.world)
    dm.setup()
    system = threestudio.find(cfg.system_type)(cfg.system, precision=32)
    reduce_s = []
    reducer = None
    if ranks.world > 1:
        all_reduce = GradMeanAllReduce(ranks.world)

        def reducer(loss, grads, signalled=False):
            start = time.perf_counter()
            out = all_reduce(loss, grads, signalled)
            out[0].asnumpy()
            reduce_s.append(time.perf_counter() - start)
            return out
    trainer = Trainer(trainer_config(cfg), checkpoint_config(cfg), grad_reducer=reducer, writer=False)
    trainer.setup_optimization(system)
    system.set_train(True)
    step_s = []
    for step in range(steps + 2):
        start = time.perf_counter()
        batch = dm.train_dataset.collate_next(step)
        system.set_step(0, step)
        system.do_update_step(0, step)
        trainer.train_step(system, batch)
        if step >= 2:
            step_s.append(time.perf_counter() - start)
    reduce_s = reduce_s[2:]
    n_values = 2 + sum(int(np.prod(p.shape)) for p in trainer.params)  # loss, stop flag, gradients
    bare_s, full_s = [], []
    if ranks.world > 1:
        op = ms.ops.AllReduce()
        for n, times, repeat in ((n_values, bare_s, 10), (FULL_SIZE_VALUES, full_s, 3)):
            buf = ms.Tensor(np.ones(n, np.float32))
            for _ in range(repeat):
                op(ms.Tensor(np.ones(1, np.float32))).asnumpy()  # synchronise the ranks
                start = time.perf_counter()
                op(buf).asnumpy()
                times.append(time.perf_counter() - start)
    if ranks.is_writer:
        print(json.dumps({"ranks": ranks.world, "step_s": round(float(np.median(step_s)), 4),
                          "step_s_all": [round(s, 3) for s in step_s],
                          "reducer_s": round(float(np.median(reduce_s)), 4) if reduce_s else 0.0,
                          "bare_allreduce_s": round(float(np.median(bare_s)), 5) if bare_s else 0.0,
                          "allreduce_bytes": 4 * n_values,
                          "bare_allreduce_full_size_s": round(float(np.median(full_s)), 4) if full_s else 0.0,
                          "full_size_bytes": 4 * FULL_SIZE_VALUES}), flush=True)


def launch(ranks: int, steps: int, log_dir: str) -> dict:
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3", PYTHONWARNINGS="ignore",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    script = [str(Path(__file__).resolve()), "--bench_rank", "--steps", str(steps)]
    if ranks == 1:
        cmd = [sys.executable] + script
    else:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-c", "import sys; from mindspore.parallel.cluster.run import main; sys.exit(main())",
               f"--worker_num={ranks}", f"--local_worker_num={ranks}", "--master_addr=127.0.0.1",
               f"--master_port={port}", f"--log_dir={log_dir}", "--join=True", "--cluster_time_out=300"] + script
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800).stdout
    lines = [line for line in out.splitlines() if line.startswith('{"ranks"')]
    if not lines:
        raise SystemExit(f"error: the {ranks}-rank run printed no result:\n{out[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (after 2 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (1 rank, 2 ranks)")
    parser.add_argument("--bench_rank", action="store_true", help=argparse.SUPPRESS)  # msrun would take --worker*
    args = parser.parse_args(argv)
    if args.bench_rank:
        return worker(args.steps)
    with tempfile.TemporaryDirectory(prefix="bench_msrun_") as logs:
        for rnd in range(args.rounds):
            for ranks in (1, 2):
                result = launch(ranks, args.steps, os.path.join(logs, f"r{rnd}_{ranks}"))
                print(json.dumps({"round": rnd, "load_avg_1min": round(os.getloadavg()[0], 2), **result}), flush=True)


if __name__ == "__main__":
    main()

"""Start launch.py / t2i.py under MindSpore's ``msrun`` on loopback with a free port; the
workers' logs go to ``<tmp>/msrun_logs`` (under pytest's tmp_path, removed with it)."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREESTUDIO = REPO / "MVDream-threestudio"
LAUNCH = THREESTUDIO / "launch.py"
T2I = REPO / "MVDream" / "scripts" / "t2i.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_env(node_timeout=None):
    """``node_timeout``: seconds without a worker's heartbeat before msrun's scheduler gives up on
    it (MindSpore's ``MS_NODE_TIMEOUT``); a test of a failing rank sets it short, since the
    scheduler waits that long before it ends the run (about 35 s by default)."""
    # msrun starts its workers as `python script ...`: this interpreter's directory goes first
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3", PYTHONWARNINGS="ignore",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join([str(THREESTUDIO), str(REPO / "MVDream"),
                                           os.environ.get("PYTHONPATH", "")]))
    if node_timeout:
        env["MS_NODE_TIMEOUT"] = str(node_timeout)
    return env


def msrun_command(script, args, log_dir, workers=2, cluster_time_out=120):
    return [sys.executable, "-c", "import sys; from mindspore.parallel.cluster.run import main; sys.exit(main())",
            f"--worker_num={workers}", f"--local_worker_num={workers}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", f"--log_dir={log_dir}", "--join=True",
            f"--cluster_time_out={cluster_time_out}", str(script), *map(str, args)]


def start_msrun(script, args, cwd, log_dir, workers=2, node_timeout=None):
    """Popen of msrun in its own session (so that ``stop_msrun`` can end what is left)."""
    return subprocess.Popen(msrun_command(script, args, log_dir, workers), cwd=cwd, env=msrun_env(node_timeout),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop_msrun(proc, timeout=60):
    """SIGINT msrun (it kills its workers), then whatever remains of its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    out = proc.communicate(timeout=30)[0]
    return out


def run_msrun(script, args, cwd, log_dir, workers=2, timeout=600, node_timeout=None):
    proc = start_msrun(script, args, cwd, log_dir, workers, node_timeout)
    try:
        out = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            stop_msrun(proc)
    return proc.returncode, out


def worker_pids(log_dir, workers=2):
    """{rank: pid} from launch.py's "rank r/N (pid P)" lines in the worker logs."""
    import re

    pids = {}
    for rank in range(workers):
        path = Path(log_dir) / f"worker_{rank}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        m = re.search(rf"rank {rank}/{workers} \(pid (\d+)\)", text)
        if m:
            pids[rank] = int(m.group(1))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout, interval=0.5):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False

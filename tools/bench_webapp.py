"""Responsiveness and memory of the two web apps (numbers only; run on an otherwise idle machine).

    python tools/bench_webapp.py [--steps 20] [--requests 30]

1. previews app (MVDream/scripts/gradio_app.py, tiny parity checkpoint): seconds from the start
   of the process until the page first answers.
2. text-to-3D app (MVDream-threestudio/gradio_app.py): seconds until the page first answers; then
   a tiny-config run is started through the app's own API and, while the child trains, the page
   (GET /) and the app's status call (the one the page polls) are timed ``--requests`` times each
   (median and max ms); finally the peak RSS (VmHWM) of the server process itself, children
   excluded, and that of the previews server.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO / "tests" / "fixtures" / "parity"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(script, args, cwd):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3",
               PYTHONPATH=os.pathsep.join([str(REPO / "MVDream-threestudio"), str(REPO / "MVDream")]))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(script), *map(str, args), "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: {script.name} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, url, time.time() - t0
        except OSError:
            time.sleep(0.1)


def peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc):
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def timed_ms(fn, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.2)
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1), "n": n}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps of the tiny run")
    parser.add_argument("--requests", type=int, default=30, help="timed requests of each kind")
    args = parser.parse_args()
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="bench-webapp-"))
    results = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0]}

    proc, url, first = start(REPO / "MVDream" / "scripts" / "gradio_app.py",
                             ["--config_path", PARITY / "tiny_mvdream.yaml", "--ckpt_path", PARITY / "tiny_mvdream.pt",
                              "--size", 16, "--output_dir", work / "previews"], work)
    results["previews_first_answer_s"] = round(first, 2)
    time.sleep(3)  # the model loads in the background after the page is up
    results["previews_server_peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
    stop(proc)

    proc, url, first = start(REPO / "MVDream-threestudio" / "gradio_app.py",
                             ["--outputs", work / "outputs", "--config", "mvdream-tiny.yaml"], work)
    results["app3d_first_answer_s"] = round(first, 2)
    results["app3d_idle_page_ms"] = timed_ms(lambda: urllib.request.urlopen(url, timeout=30).read(), 10)
    client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
    client.predict("a red apple", "", "mvdream-tiny.yaml", args.steps, 0, "", True, api_name="/start")
    outputs = work / "outputs"
    t0 = time.time()
    while not list(outputs.glob("*/*/metrics.csv")):  # training has started
        if time.time() - t0 > 600:
            raise SystemExit("error: the run did not start training in 600 s")
        time.sleep(0.5)
    results["app3d_busy_page_ms"] = timed_ms(lambda: urllib.request.urlopen(url, timeout=30).read(), args.requests)
    results["app3d_busy_status_call_ms"] = timed_ms(lambda: client.predict(api_name="/refresh"), args.requests)
    results["training_still_running"] = not list(outputs.glob("*/*/save/*.mp4"))
    results["app3d_server_peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
    stop(proc)
    results["load_avg_at_end"] = os.getloadavg()[0]
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

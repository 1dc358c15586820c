"""Run launch.py on the tiny config, in a subprocess or in-process.

Until every module type of mvdream-tiny.yaml is registered in this checkout, the whole model is
replaced by the stubs of ``system_stubs`` (mixing real and stub modules would test neither).
"""
import os
import subprocess
import sys
from pathlib import Path

import system_stubs
import threestudio

REPO = Path(__file__).resolve().parents[1]
THREESTUDIO = REPO / "MVDream-threestudio"
TINY = THREESTUDIO / "configs" / "mvdream-tiny.yaml"
TESTS = Path(__file__).resolve().parent

# a runner that registers the stubs, then behaves exactly like `python launch.py ...`
RUNNER = ("import sys, system_stubs, launch; sys.exit(launch.main(sys.argv[1:]))")


def tiny_config(tmp_path) -> str:
    """The shipped tiny config, or a stub version of it while modules are missing."""
    dst = Path(tmp_path) / "mvdream-tiny-stub.yaml"
    types = [system_stubs.yaml.safe_load(TINY.read_text())["system"][f"{k}_type"] for k in system_stubs.STUB_FOR]
    if all(t in threestudio.__modules__ for t in types):
        return str(TINY)
    system_stubs.stub_config(TINY, dst, force=True)
    return str(dst)


def run_launch(args, cwd, timeout=300):
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3",
               PYTHONPATH=os.pathsep.join([str(TESTS), str(THREESTUDIO), str(REPO / "MVDream"),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-W", "ignore", "-c", RUNNER, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)

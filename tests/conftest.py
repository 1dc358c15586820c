"""Shared test setup: paths to the parity fixtures and the threestudio package."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Reference data of the original PyTorch code, kept in the repository (see its README).
PARITY = REPO / "tests" / "fixtures" / "parity"
# The checkout's own packages first, so a second checkout never tests the installed one.
sys.path.insert(0, str(REPO / "MVDream"))
sys.path.insert(0, str(REPO / "MVDream-threestudio"))
sys.path.insert(0, str(REPO / "tools"))


def pin_xdist_worker_to_one_core():
    """Under pytest-xdist with no more workers than cores, worker gwN and every thread and child
    process it starts from here on (MindSpore's runtime threads, launch.py, msrun ranks, Chromium)
    run on core N only. MindSpore's actor and kernel threads spin-wait for each other around every
    op: on one core a hand-off is a yield, across cores it burns the other core. Measured, the
    oracle training of test_oracle_3d (40 steps, one thread) alone: 33 s on one core against 49 s
    free to use both; and the other worker's subprocesses no longer preempt it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    cores = sorted(os.sched_getaffinity(0))
    if worker.startswith("gw") and 0 < workers <= len(cores):
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


# before MindSpore starts its threads, which inherit the calling thread's affinity
pin_xdist_worker_to_one_core()

import pytest  # noqa: E402

from mvdream.runtime import setup_runtime  # noqa: E402

# The test session is an entry point: its one runtime set-up (tests run on CPU). The tests' models
# are tiny, and there a second thread costs more than it gives: the oracle training took 49 s
# with one thread and 67 s with two, alone on 2 cores (MindSpore's idle kernel thread spins).
# Under pytest-xdist each worker has one core anyway (above).
setup_runtime("CPU", threads=1)


@pytest.fixture(scope="session")
def parity_dir():
    assert PARITY.is_dir(), f"parity fixtures not found at {PARITY}"
    return PARITY


@pytest.fixture(scope="session")
def tiny_state_dict(parity_dir):
    """name -> numpy array of the original tiny checkpoint, read without torch."""
    from mvdream.checkpoint import read_torch_state_dict
    return read_torch_state_dict(parity_dir / "tiny_mvdream.pt")


@pytest.fixture(scope="session")
def tiny_config(parity_dir):
    from omegaconf import OmegaConf
    return OmegaConf.load(parity_dir / "tiny_mvdream.yaml")


# The longest tests, seconds alone on a 2-core CPU (the suite's --durations). Under pytest-xdist
# one worker runs them one after the other while the other worker runs everything else, then
# both share what is left: started last, one of them would keep its worker busy after the other
# had finished.
LONG_TESTS = {
    "tests/test_oracle_3d.py::test_inconsistent_teacher_does_not_build_an_object": 110,
    "tests/test_oracle_3d.py::test_x0_sds_with_oracle_teacher_builds_its_object": 170,
    "tests/test_photometric_fit.py::test_photometric_fit_held_out_psnr": 70,
    "tests/test_viewdep_ablation.py::test_dir_encoding_beats_xyz_only_on_the_specular_scene": 80,
}


def _expected_seconds(nodeid):
    return LONG_TESTS.get(nodeid.split("[")[0], 0)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: _expected_seconds(item.nodeid), reverse=True)  # stable: collection order otherwise


try:
    import xdist  # noqa: F401 - the hook below exists only with pytest-xdist installed
except ImportError:
    pass
else:
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") != "load":
            return None  # another --dist asked for: xdist's own scheduler
        from xdist.scheduler import LoadScheduling

        class LongTestsOnOneWorker(LoadScheduling):
            """pytest-xdist's load scheduling, except that the first worker starts with all of
            LONG_TESTS (first in the collection, above) and the others with two tests each."""

            def schedule(self):
                if self.collection is not None or len(self.nodes) < 2 or not self._check_nodes_have_same_collection():
                    return super().schedule()
                self.collection = next(iter(self.node2collection.values()))
                self.pending[:] = range(len(self.collection))
                if self.maxschedchunk is None:
                    self.maxschedchunk = len(self.collection)
                long_tests = sum(1 for nodeid in self.collection if _expected_seconds(nodeid))
                first, *others = self.nodes
                self._send_tests(first, max(2, long_tests))
                for node in others:
                    self._send_tests(node, 2)

        return LongTestsOnOneWorker(config, log)

"""Shared test setup: paths to the parity fixtures and the threestudio package."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Reference data of the original PyTorch code, kept in the repository (see its README).
PARITY = REPO / "tests" / "fixtures" / "parity"
# The checkout's own packages first, so a second checkout never tests the installed one.
sys.path.insert(0, str(REPO / "MVDream"))
sys.path.insert(0, str(REPO / "MVDream-threestudio"))
sys.path.insert(0, str(REPO / "tools"))

import pytest  # noqa: E402

from mvdream.runtime import setup_runtime  # noqa: E402

# The test session is an entry point: its one runtime set-up (tests run on CPU). The tests' models
# are tiny, and there a second thread costs more than it gives: the oracle training took 49 s
# with one thread and 67 s with two, alone on 2 cores (MindSpore's idle kernel thread spins).
# Under pytest-xdist the workers share the cores too.
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


# The longest CPU-bound tests, seconds alone on a 2-core CPU (the suite's --durations). Under
# pytest-xdist one worker runs them one after the other while the other worker runs everything
# else: a training beside short tests (process start-ups, compiles, browsers) keeps most of the
# cores, and two trainings side by side each run at about half speed.
LONG_TESTS = {
    "tests/test_oracle_3d.py::test_inconsistent_teacher_does_not_build_an_object": 210,
    "tests/test_oracle_3d.py::test_x0_sds_with_oracle_teacher_builds_its_object": 170,
    "tests/test_photometric_fit.py::test_photometric_fit_held_out_psnr": 100,
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

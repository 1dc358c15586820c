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

import pytest  # noqa: E402

from mvdream.runtime import setup_runtime  # noqa: E402

# the test session is an entry point: its one runtime set-up (tests run on CPU). Under
# pytest-xdist the workers share the cores: one thread each when both run CPU-bound tests
# measured 47-50 s against 53-57 s for two threads each (two oracle trainings side by side).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
setup_runtime("CPU", threads=max(1, (os.cpu_count() or 1) // WORKERS))


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


def pytest_collection_modifyitems(items):
    """The slow tests first (collection order otherwise): pytest-xdist hands the first quarter
    of the items out round-robin, so the long ones run side by side on the two workers
    instead of ending the run on one of them while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

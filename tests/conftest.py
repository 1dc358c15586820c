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

# the test session is an entry point: its one runtime set-up (tests run on CPU)
setup_runtime("CPU")


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



def pytest_configure(config):
    # pytest-xdist's load scheduler hands out tests one at a time as workers free up (not in
    # chunks of a quarter of the suite), so the order below decides what runs side by side
    if getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1


def _expected_seconds(item):
    marker = item.get_closest_marker("slow")
    return 0 if marker is None else marker.kwargs.get("seconds", 30)


def pytest_collection_modifyitems(items):
    """The longest tests first (collection order otherwise), so that under pytest-xdist they
    run side by side instead of ending the run on one worker while the other idles."""
    items.sort(key=_expected_seconds, reverse=True)  # stable
    # A worker holds two tests, the running one and its next, so the first four go 0, 1 to one
    # worker and 2, 3 to the other: the two longest at 0 and 2.
    if len(items) > 2:
        items[1], items[2] = items[2], items[1]

"""Shared test setup: paths to the parity fixtures and the threestudio package."""
import os
import sys
from pathlib import Path

# PyNative on CPU spin-waits on its host queue without this (3-4x slower).
os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
os.environ.setdefault("GLOG_v", "3")

REPO = Path(__file__).resolve().parents[1]
# Reference data of the original PyTorch code, kept in the repository (see its README).
PARITY = REPO / "tests" / "fixtures" / "parity"
# The checkout's own packages first, so a second checkout never tests the installed one.
sys.path.insert(0, str(REPO / "MVDream"))
sys.path.insert(0, str(REPO / "MVDream-threestudio"))
sys.path.insert(0, str(REPO / "tools"))

import pytest  # noqa: E402


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

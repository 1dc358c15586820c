"""Checkpoint reading, writing and strict loading into MindSpore cells."""
import importlib

from .torch_reader import CheckpointError, read_torch_checkpoint, read_torch_state_dict

# Names of the submodules that import MindSpore, loaded on first use: a command-line tool that
# only needs ``CheckpointError`` (for its one-line errors) then reports bad input in a fraction
# of a second instead of after MindSpore's ~3 s import.
_LAZY = {"load_checkpoint_file": "files", "save_state_dict": "files", "summarize_state_dict": "files",
         "check_keys": "loading", "load_state_dict_into": "loading"}

__all__ = ["CheckpointError", "read_torch_checkpoint", "read_torch_state_dict", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

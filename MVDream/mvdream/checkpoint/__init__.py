"""Checkpoint reading, writing and strict loading into MindSpore cells."""
from .torch_reader import CheckpointError, read_torch_checkpoint, read_torch_state_dict
from .loading import load_state_dict_into

__all__ = ["CheckpointError", "read_torch_checkpoint", "read_torch_state_dict", "load_state_dict_into"]

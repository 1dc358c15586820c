"""Checkpoint reading, writing and strict loading into MindSpore cells."""
from .torch_reader import CheckpointError, read_torch_checkpoint, read_torch_state_dict
from .files import load_checkpoint_file, save_state_dict, summarize_state_dict
from .loading import check_keys, load_state_dict_into

__all__ = ["CheckpointError", "read_torch_checkpoint", "read_torch_state_dict", "load_checkpoint_file",
           "save_state_dict", "summarize_state_dict", "check_keys", "load_state_dict_into"]

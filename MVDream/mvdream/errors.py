"""Errors that command-line tools report as one line (no traceback)."""
from .checkpoint import CheckpointError
from .prompt_list import PromptListError


class UnknownModelError(ValueError):
    """A model name that is not one of the pretrained models."""


class ModelConfigError(ValueError):
    """A model config file (e.g. an open_clip model json) that cannot be used as it is."""


def user_facing_errors():
    """Exception types whose message alone tells the user what to fix."""
    return (CheckpointError, UnknownModelError, ModelConfigError, FileNotFoundError, PromptListError)

"""Build the released MVDream models from their config and checkpoint."""
import os
from importlib import resources
from pathlib import Path

from mindspore.nn.utils import no_init_parameters
from omegaconf import OmegaConf

from .checkpoint import CheckpointError, load_checkpoint_file
from .errors import UnknownModelError
from .ldm.util import instantiate_from_config

PRETRAINED_MODELS = {
    "sd-v2.1-base-4view": {
        "config": "sd-v2-base.yaml",
        "repo_id": "MVDream/MVDream",
        "filename": "sd-v2.1-base-4view.pt",
    },
    "sd-v1.5-4view": {
        "config": "sd-v1.yaml",
        "repo_id": "MVDream/MVDream",
        "filename": "sd-v1.5-4view.pt",
    },
}


class ModelNotAvailableError(CheckpointError):
    """The checkpoint is neither given, nor cached, nor downloadable."""


def _check_model_name(model_name):
    if model_name not in PRETRAINED_MODELS:
        raise UnknownModelError(f"model name {model_name!r} is not a pre-trained model; available models: "
                         + ", ".join(PRETRAINED_MODELS))
    return PRETRAINED_MODELS[model_name]


def get_config_file(config_name):
    """Path of a config shipped with the package (``mvdream/configs/<config_name>``)."""
    path = Path(str(resources.files("mvdream").joinpath("configs", config_name)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config {config_name} is not shipped with the mvdream package")
    return path


def _offline():
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_reachable(endpoint: str, timeout: float = 3.0) -> None:
    """Raise ``OSError`` unless a TCP connection to ``endpoint``'s host opens within ``timeout``."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    socket.create_connection((url.hostname, port), timeout=timeout).close()


def download_checkpoint(repo_id, filename, cache_dir=None, option="--ckpt_path"):
    """Local path of ``repo_id/filename`` from the Hugging Face cache, downloading it if needed.

    With ``HF_HUB_OFFLINE=1`` only the cache is consulted (no network access).
    On failure raises a one-line ``ModelNotAvailableError`` telling the user where
    to get the file and which ``option`` to pass it with (callers such as
    threestudio pass their own option name).
    """
    from huggingface_hub import constants, hf_hub_download
    offline = _offline()
    try:
        # The cache first: no network round trip for a file that is already here.
        return hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached
        pass
    try:
        if offline:
            raise ConnectionError("offline")
        # huggingface_hub retries an unreachable host for ~25 s, printing a line per try:
        # a short connect first turns "no network" into one line at once.
        _check_reachable(constants.ENDPOINT)
        return hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache_dir)
    except Exception as err:  # LocalEntryNotFoundError, connection/HTTP errors, ...
        why = "offline mode (HF_HUB_OFFLINE) is set" if offline else \
            f"the hub cannot be reached ({type(err).__name__})"
        where = f" ({cache_dir})" if cache_dir else ""
        raise ModelNotAvailableError(
            f"{filename} is not in the Hugging Face cache{where} and {why}; download it from "
            f"https://huggingface.co/{repo_id} and pass {option} /path/to/{filename}") from None


def load_model_config(model_name=None, config_path=None):
    """The ``model`` section of a named model's config, or of the YAML at ``config_path``."""
    if config_path is not None:
        if not Path(config_path).is_file():
            raise FileNotFoundError(f"{config_path}: config file not found")
        config = OmegaConf.load(config_path)
    else:
        config = OmegaConf.load(get_config_file(_check_model_name(model_name)["config"]))
    return config.model if "model" in config else config


def build_model(model_name, ckpt_path=None, cache_dir=None, config_path=None, progress=False,
                pretrained=True, weights_dtype=None):
    """Instantiate a model from its config and load its checkpoint strictly.

    ``model_name``: a key of ``PRETRAINED_MODELS`` (may be None when both
    ``config_path`` and ``ckpt_path`` are given). ``ckpt_path``: a local
    ``.pt``/``.pth``/``.ckpt``/``.safetensors`` file; when None the released file
    is taken from (or downloaded into) the Hugging Face cache.
    ``pretrained=False`` keeps the random initialisation (tests, tiny smoke runs).
    ``weights_dtype`` (e.g. ``mindspore.float16``) stores the network weights and runs
    the networks in that dtype; every weight is materialised once, directly in it.
    """
    info = _check_model_name(model_name) if model_name is not None or config_path is None else None
    state_dict = None
    if pretrained:
        if not ckpt_path:
            if info is None:
                raise ValueError("build_model: with a custom config_path, pass ckpt_path as well")
            ckpt_path = download_checkpoint(info["repo_id"], info["filename"], cache_dir=cache_dir)
        # Read (and validate) the weights before the slow model construction.
        state_dict = load_checkpoint_file(ckpt_path, progress=progress)
    config = load_model_config(model_name, config_path)
    # Build without initialising, so parameters are allocated once: in their final dtype,
    # and not at all for random init when a checkpoint overwrites them anyway.
    with no_init_parameters():
        model = instantiate_from_config(config)
    if weights_dtype is not None:
        model.set_dtype(weights_dtype, cast_weights=True)
    if state_dict is None:
        model.init_parameters_data()
    else:
        model.load_state_dict(state_dict, strict=True, source=str(ckpt_path))
    return model

from . import uncond, uncond_multiview  # noqa: F401

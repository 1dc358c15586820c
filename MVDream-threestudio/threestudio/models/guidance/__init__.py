from . import multiview_diffusion_guidance  # noqa: F401

from . import base, nerf_volume_renderer, volume_rendering  # noqa: F401

from . import base, neural_environment_map_background, solid_color_background  # noqa: F401

from . import base, diffuse_with_point_light, neural_radiance_material, no_material  # noqa: F401

from . import background, estimators, geometry, guidance, materials, prompt_processors, renderers  # noqa: F401

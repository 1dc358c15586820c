from . import background, estimators, exporters, geometry, guidance, materials, prompt_processors, renderers  # noqa: F401

from . import base, mvdream_prompt_processor  # noqa: F401

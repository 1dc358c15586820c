from . import base, implicit_volume  # noqa: F401

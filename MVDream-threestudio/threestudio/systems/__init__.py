
from . import mvdream  # noqa: F401

"""threestudio-style registry: modules register under a name, configs refer to that name."""
__modules__ = {}


def register(name):
    """Class decorator: make ``cls`` findable as ``threestudio.find(name)``."""

    def decorator(cls):
        if name in __modules__ and __modules__[name] is not cls:
            raise ValueError(f"threestudio module name '{name}' is registered twice")
        __modules__[name] = cls
        return cls

    return decorator


def find(name):
    if name not in __modules__:
        known = ", ".join(sorted(__modules__))
        raise KeyError(f"unknown threestudio module '{name}'; registered modules: {known}")
    return __modules__[name]


# Importing the subpackages registers their modules.
from . import data, models, systems  # noqa: E402,F401

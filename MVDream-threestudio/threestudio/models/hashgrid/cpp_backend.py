"""Placeholder: replaced by the compiled kernel backend."""
from . import register_backend


@register_backend("cpp")
class CppHashGrid:
    name = "cpp"

    @staticmethod
    def check_available():
        raise RuntimeError("C++ hash grid kernel not built")

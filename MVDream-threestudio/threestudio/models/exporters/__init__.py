from . import base, mesh_exporter  # noqa: F401

"""Old import path, kept as a thin re-export: see :mod:`pyro_genmod.datasets.file`."""

from .datasets.file import array_file, read_array  # noqa: F401

__all__ = ["array_file", "read_array"]

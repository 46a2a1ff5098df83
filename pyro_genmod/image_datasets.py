"""Old import path, kept as a thin re-export: see :mod:`pyro_genmod.datasets.images`."""

from .datasets.images import *  # noqa: F401,F403
from .datasets.images import __all__  # noqa: F401

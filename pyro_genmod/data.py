"""Old import path, kept as a thin re-export: see :mod:`pyro_genmod.datasets`."""

from .datasets import *  # noqa: F401,F403
from .datasets import __all__  # noqa: F401

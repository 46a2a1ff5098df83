"""Old import path, kept as a thin re-export: every ArviZ call lives in :mod:`pyro_genmod.arviz_bridge`."""

from .arviz_bridge import *  # noqa: F401,F403
from .arviz_bridge import __all__  # noqa: F401

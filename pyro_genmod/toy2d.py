"""Old import path, kept as a thin re-export: see :mod:`pyro_genmod.datasets.toy2d` and :mod:`pyro_genmod.plots`."""

from .datasets.toy2d import eight_gaussians, pinwheel, rings, two_moons  # noqa: F401
from .plots import density_figure, plot_learned_density  # noqa: F401

__all__ = ["two_moons", "pinwheel", "rings", "eight_gaussians", "density_figure", "plot_learned_density"]

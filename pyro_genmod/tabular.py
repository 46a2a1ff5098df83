"""Old import path, kept as a thin re-export: see :mod:`pyro_genmod.datasets.tabular`
(``sampled_dataset`` moved to :mod:`pyro_genmod.tasks`: it draws from a model)."""

from .datasets.tabular import breast_cancer, iris, sklearn_tabular, wine  # noqa: F401

__all__ = ["sklearn_tabular", "iris", "wine", "breast_cancer"]

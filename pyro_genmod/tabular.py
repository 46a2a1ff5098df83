"""Old import path, kept as a thin re-export: see :mod:`pyro_genmod.datasets.tabular` (and
:func:`pyro_genmod.tasks.sampled_dataset`)."""

from .datasets.tabular import breast_cancer, iris, sklearn_tabular, wine  # noqa: F401
from .tasks import sampled_dataset  # noqa: F401

__all__ = ["sklearn_tabular", "sampled_dataset"]

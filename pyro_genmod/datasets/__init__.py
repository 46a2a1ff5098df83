"""Datasets: one file per dataset family, each loader registered by name and found by the registry.

A new dataset is a new file here whose loader is decorated with ``@register_dataset("name")``
and returns a :class:`~pyro_genmod.datasets.base.Dataset`.
"""

from .base import (
    BINARIZATIONS,
    Dataset,
    binarize_once,
    load_dataset,
    require_files,
    split_and_binarize,
    train_test_dataset,
)

__all__ = [
    "Dataset", "load_dataset", "BINARIZATIONS", "require_files", "train_test_dataset", "split_and_binarize", "binarize_once",
]

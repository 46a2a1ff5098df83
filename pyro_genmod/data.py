"""Old import path, kept as a thin re-export: see :mod:`pyro_genmod.datasets`."""

from .datasets.base import (  # noqa: F401
    BINARIZATIONS,
    Dataset,
    binarize_once,
    load_dataset,
    require_files,
    split_and_binarize,
    train_test_dataset,
)

__all__ = ["Dataset", "load_dataset", "BINARIZATIONS", "require_files", "train_test_dataset"]

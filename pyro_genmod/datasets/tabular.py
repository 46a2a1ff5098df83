"""Real-valued tabular datasets: scikit-learn's bundled sets (data drawn from a model: ``tasks.sampled_dataset``).

The bundled sets need no download. Each is split with a fixed permutation and standardized
with the training split's mean and standard deviation (so no test statistics leak in).
"""

from __future__ import annotations

import dataclasses

import torch

from pyro_genmod._registry import register_dataset

from .base import Dataset, split_and_binarize

__all__ = ["sklearn_tabular", "iris", "wine", "breast_cancer"]


def _standardized(data: Dataset) -> Dataset:
    mean, std = data.train.mean(dim=0), data.train.std(dim=0).clamp_min(1e-6)
    return dataclasses.replace(
        data,
        train=(data.train - mean) / std,
        val=(data.val - mean) / std,
        test=(data.test - mean) / std,
    )


def sklearn_tabular(name: str, loader, num_val: int, num_test: int, seed: int) -> Dataset:
    """Load a scikit-learn ``load_*`` bunch, split it and standardize it."""
    bunch = loader()
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target)
    data = split_and_binarize(
        name, x, y, num_val=num_val, num_test=num_test, binarize=False, seed=seed,
        options={"seed": seed},
    )
    return _standardized(data)


@register_dataset("iris")
def iris(seed: int = 0) -> Dataset:
    """scikit-learn's iris: 150 flowers, 4 features, standardized; 105 train, 15 val, 30 test."""
    from sklearn.datasets import load_iris

    return sklearn_tabular("iris", load_iris, num_val=15, num_test=30, seed=seed)


@register_dataset("wine")
def wine(seed: int = 0) -> Dataset:
    """scikit-learn's wine: 178 wines, 13 features, standardized; 118 train, 20 val, 40 test."""
    from sklearn.datasets import load_wine

    return sklearn_tabular("wine", load_wine, num_val=20, num_test=40, seed=seed)


@register_dataset("breast_cancer")
def breast_cancer(seed: int = 0) -> Dataset:
    """scikit-learn's breast cancer: 569 tumours, 30 features, standardized; 400/57/112 split."""
    from sklearn.datasets import load_breast_cancer

    return sklearn_tabular("breast_cancer", load_breast_cancer, num_val=57, num_test=112, seed=seed)

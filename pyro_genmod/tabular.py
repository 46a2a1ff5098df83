"""Real-valued tabular datasets: scikit-learn's bundled sets, and data drawn from a model.

The bundled sets need no download. Each is split with a fixed permutation and standardized
with the training split's mean and standard deviation (so no test statistics leak in).
"""

from __future__ import annotations

import dataclasses

import torch

from ._registry import register_dataset
from .data import Dataset, split_and_binarize
from .tasks import sample

__all__ = ["sklearn_tabular", "sampled_dataset"]


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


def sampled_dataset(model, num_train: int, num_val: int, num_test: int, seed: int = 0) -> Dataset:
    """Train, validation and test sets drawn from ``model``'s p(x) with a fixed seed.

    Useful to check a trainer against the known parameters that generated the data.
    """
    x = sample(model, num_train + num_val + num_test, seed=seed).detach()
    train, val, test = torch.split(x, [num_train, num_val, num_test])
    name = f"sampled_{getattr(model, 'registry_name', 'model')}"
    return Dataset(name=name, train=train, val=val, test=test, options={"seed": seed})

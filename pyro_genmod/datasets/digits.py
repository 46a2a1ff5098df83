"""scikit-learn's bundled 8x8 digits: the embedded default dataset (no download)."""

from __future__ import annotations

import torch

from pyro_genmod._registry import register_dataset

from .base import Dataset, split_and_binarize

__all__ = ["digits"]


@register_dataset("digits")
def digits(binarize: bool = True, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to [0, 1]; the embedded default.

    Fixed splits: 1,297 train, 200 validation, 300 test, from a permutation seeded by ``seed``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return split_and_binarize(
        "digits", x, y, num_val=200, num_test=300, binarize=binarize, seed=seed,
        options={"binarize": binarize, "seed": seed},
    )

"""Toy 2-D densities: two moons, pinwheel, rings and 8 Gaussians (their plots: :mod:`pyro_genmod.plots`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from pyro_genmod._registry import register_dataset
from pyro_genmod.errors import DataError

from .base import Dataset, split_and_binarize

__all__ = ["two_moons", "pinwheel", "rings", "eight_gaussians"]


def _toy(name: str, x: np.ndarray, labels: np.ndarray, **options) -> Dataset:
    """Split ``x`` into train / validation / test (a tenth of ``num_train`` each for the last two)."""
    num_train, seed = options["num_train"], options["seed"]
    num_heldout = max(1, num_train // 10)
    return split_and_binarize(
        name, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long),
        num_val=num_heldout, num_test=num_heldout, binarize=False, seed=seed, options=options,
    )


def _total(num_train: int) -> int:
    if not isinstance(num_train, int) or num_train < 10:
        raise DataError(f"num_train must be an integer of at least 10, got {num_train!r}")
    return num_train + 2 * max(1, num_train // 10)


@register_dataset("two_moons")
def two_moons(num_train: int = 10000, noise: float = 0.05, seed: int = 0) -> Dataset:
    """Two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled.

    Arguments:
        num_train: training points; validation and test sets get a tenth of that each.
        noise: standard deviation of the Gaussian noise added to each point.
        seed: seeds the draw and the split.
    """
    from sklearn.datasets import make_moons

    x, y = make_moons(_total(num_train), noise=noise, random_state=seed)
    x = (x - np.array([0.5, 0.25])) * 2.0
    return _toy("two_moons", x, y, num_train=num_train, noise=noise, seed=seed)


@register_dataset("pinwheel")
def pinwheel(
    num_train: int = 10000, num_arms: int = 5, radial_std: float = 0.3, tangential_std: float = 0.1,
    rate: float = 0.25, seed: int = 0,
) -> Dataset:
    """Johnson et al.'s pinwheel: ``num_arms`` Gaussian blobs bent into spiral arms.

    References:
        | Composing graphical models with neural networks (Johnson et al., 2016) https://arxiv.org/abs/1603.06277

    Arguments:
        num_train: training points; validation and test sets get a tenth of that each.
        num_arms: number of arms (labels are the arm index).
        radial_std, tangential_std: spread of each blob along and across its arm.
        rate: how strongly the arms bend with distance from the origin.
        seed: seeds the draw and the split.
    """
    rng = np.random.default_rng(seed)
    n = _total(num_train)
    labels = rng.integers(num_arms, size=n)
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std]) + np.array([1.0, 0.0])
    angles = 2 * math.pi * labels / num_arms + rate * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    x = 2.0 * np.einsum("nij,nj->ni", rotations, features)
    return _toy(
        "pinwheel", x, labels, num_train=num_train, num_arms=num_arms, radial_std=radial_std,
        tangential_std=tangential_std, rate=rate, seed=seed,
    )


@register_dataset("rings")
def rings(num_train: int = 10000, num_rings: int = 4, noise: float = 0.08, seed: int = 0) -> Dataset:
    """Concentric rings of radii 1..``num_rings``, scaled to fit in [-4, 4], labelled by ring.

    Points are spread over the rings in proportion to their circumference.

    Arguments:
        num_train: training points; validation and test sets get a tenth of that each.
        num_rings: number of rings.
        noise: standard deviation of the Gaussian noise added to each point.
        seed: seeds the draw and the split.
    """
    rng = np.random.default_rng(seed)
    n = _total(num_train)
    radii = np.arange(1, num_rings + 1)
    labels = rng.choice(num_rings, size=n, p=radii / radii.sum())
    angle = rng.uniform(0, 2 * math.pi, size=n)
    radius = radii[labels] * 3.5 / num_rings
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1)
    x = x + noise * rng.standard_normal((n, 2))
    return _toy("rings", x, labels, num_train=num_train, num_rings=num_rings, noise=noise, seed=seed)


@register_dataset("eight_gaussians")
def eight_gaussians(num_train: int = 10000, std: float = 0.35, seed: int = 0) -> Dataset:
    """Eight Gaussians evenly spaced on a circle of radius 2.83 (FFJORD's ``8gaussians``).

    References:
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models (Grathwohl et al., 2019) https://arxiv.org/abs/1810.01367

    Arguments:
        num_train: training points; validation and test sets get a tenth of that each.
        std: standard deviation of each component.
        seed: seeds the draw and the split.
    """
    rng = np.random.default_rng(seed)
    n = _total(num_train)
    labels = rng.integers(8, size=n)
    angle = 2 * math.pi * labels / 8
    centres = 4.0 / math.sqrt(2.0) * np.stack([np.cos(angle), np.sin(angle)], -1)
    x = centres + std * rng.standard_normal((n, 2))
    return _toy("eight_gaussians", x, labels, num_train=num_train, std=std, seed=seed)

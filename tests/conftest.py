"""Shared fixtures: the embedded digits dataset and a small trained pair."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pyro_genmod as pg


@pytest.fixture(scope="session")
def digits() -> pg.Dataset:
    return pg.load_dataset("digits")


@pytest.fixture(scope="session")
def trained_vae(digits):
    """A VAE with a mean-field guide trained briefly on digits (shared, do not mutate)."""
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=4)
    guide = pg.create_guide("mean_field", model)
    pg.fit(model, guide, digits, epochs=15, seed=0, progress=False)
    return model, guide


@pytest.fixture(scope="session")
def tiny(digits) -> pg.Dataset:
    """48 training points (3 steps of 16), 8 validation and 8 test points of 8x8 digits, with labels.
    Test files that need another subset define their own ``tiny``."""
    cut = {"train": 48, "val": 8, "test": 8}
    parts = {split: getattr(digits, split)[:n] for split, n in cut.items()}
    labels = {f"{s}_labels": getattr(digits, f"{s}_labels")[:n] for s, n in cut.items()}
    return dataclasses.replace(digits, **parts, **labels)

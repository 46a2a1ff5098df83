"""Shared fixtures: the embedded digits dataset and a small trained pair."""

from __future__ import annotations

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

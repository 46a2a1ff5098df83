"""Our importance-sampled log p(x) against pythae 0.1.2's ``get_nll`` on the same weights (issue 21)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import pyro_genmod as pg

pytest.importorskip("pythae")  # the "peers" extra (also in the "test" extra)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks folder holds the pythae twin

from benchmarks.peers import pythae_vae, same_draws


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = pg.create_model("vae", (1, 28, 28), latent_dim=20, hidden=[400])
    guide = pg.create_guide("mean_field", model, hidden=[400])
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.13), generator=torch.Generator().manual_seed(1))
    return model, guide, pythae_vae(model, guide).eval(), x


def test_pythae_holds_the_same_networks(pair):
    model, guide, vae, _ = pair
    ours = sum(p.numel() for p in [*model.parameters(), *guide.parameters()])
    assert ours == sum(p.numel() for p in vae.parameters()) == (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)


def test_on_the_same_draws_both_estimators_give_the_same_log_likelihood_per_point(pair):
    model, guide, vae, x = pair
    ours, theirs = same_draws(model, guide, vae, x, 50, seed=3)
    # float32 sums over 784 pixels of values near 100 nats: agreement to rounding, not to chance
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-3)
    assert (ours - theirs).abs().max() < 0.01


def test_on_independent_draws_the_estimates_agree_within_standard_errors(pair):
    """20 independent K=50 estimates per point from each library (its own draws): the mean
    estimates differ by less than 4 standard errors of their difference, taken from the spread
    of the replicates (both estimators carry the same small-K bias, so it cancels)."""
    model, guide, vae, x = pair
    reps, k = 20, 50
    ours = torch.stack([pg.log_likelihood(model, guide, x, k, seed=s, khat=False).per_point for s in range(reps)]).double()
    torch.manual_seed(100)
    with torch.no_grad():
        theirs = torch.tensor([[vae.get_nll(x[i : i + 1], n_samples=k) for i in range(x.shape[0])] for _ in range(reps)])
    diff = ours.mean(0) - theirs.mean(0)
    stderr = (ours.var(0) / reps + theirs.var(0) / reps).sqrt()
    assert (stderr > 0).all()
    assert (diff.abs() < 4 * stderr).all(), (diff, stderr)

"""The per-point importance-sampled log-likelihood."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch

import pyro_genmod as pg


def test_k1_equals_single_sample_elbo(trained_vae, digits):
    """With K = 1 the IS estimate is log w of one draw: Pyro's Trace_ELBO on the same draw."""
    model, guide = trained_vae
    x = digits.test[:40]
    torch.manual_seed(7)
    per_point = pg.log_importance_weights(model, guide, x, 1)[0].detach()
    torch.manual_seed(7)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    assert float(per_point.sum()) == pytest.approx(-float(loss.detach()), rel=1e-5)
    ll = pg.log_likelihood(model, guide, x, num_samples=1, seed=3)
    assert torch.allclose(ll.per_point, ll.elbo), "for K=1 the estimate is the ELBO itself"


def test_estimate_does_not_decrease_with_k(trained_vae, digits):
    """E[log p_K] is non-decreasing in K (Burda et al. 2015, Theorem 1). Paired per-point
    differences with a fixed seed; each step must not go down by more than 3 standard errors."""
    model, guide = trained_vae
    x = digits.test
    estimates = {k: pg.log_likelihood(model, guide, x, k, seed=11).per_point for k in (1, 10, 100, 1000)}
    ks = sorted(estimates)
    for small, large in zip(ks, ks[1:]):
        diff = estimates[large] - estimates[small]
        stderr = float(diff.std() / math.sqrt(diff.numel()))
        assert float(diff.mean()) > -3 * stderr, (small, large, float(diff.mean()), stderr)
    # and the gain from K=1 to K=1000 is real, not noise
    gain = estimates[1000] - estimates[1]
    assert float(gain.mean()) > 5 * float(gain.std() / math.sqrt(gain.numel()))


def test_elbo_below_estimate_and_summary(trained_vae, digits):
    model, guide = trained_vae
    ll = pg.log_likelihood(model, guide, digits.test[:100], 500, seed=0)
    assert ll.per_point.shape == ll.elbo.shape == (100,)
    assert bool((ll.per_point >= ll.elbo - 1e-4).all()), "log-mean-exp >= mean (Jensen), per point"
    assert ll.khat.shape == (100,) and np.isfinite(ll.khat).all()
    summary = ll.summary()
    assert summary["num_importance_samples"] == 500 and summary["num_points"] == 100
    assert summary["log_likelihood_stderr"] == pytest.approx(float(ll.per_point.std() / 10), rel=1e-5)


def test_chunking_does_not_change_the_estimate(trained_vae, digits):
    """The same draws in different chunk layouts give the same numbers (to float tolerance)."""
    model, guide = trained_vae
    x = digits.test[:30]
    reference = pg.log_likelihood(model, guide, x, 64, seed=4, max_rows=64 * 30)
    # max_rows=64: one point per chunk; the RNG stream then differs, so compare statistically.
    chunked = pg.log_likelihood(model, guide, x, 64, seed=4, max_rows=64)
    small_particles = pg.log_likelihood(model, guide, x, 64, seed=4, max_rows=16)
    for other in (chunked, small_particles):
        diff = other.per_point - reference.per_point
        assert abs(float(diff.mean())) < 4 * float(diff.std() / math.sqrt(30)) + 1e-6


def test_seeded_scores_are_reproducible_and_leave_global_rng(trained_vae, digits):
    model, guide = trained_vae
    state = torch.get_rng_state()
    a = pg.log_likelihood(model, guide, digits.test[:20], 50, seed=9)
    b = pg.log_likelihood(model, guide, digits.test[:20], 50, seed=9)
    assert torch.equal(a.per_point, b.per_point)
    assert torch.equal(state, torch.get_rng_state())


def test_two_valid_proposals_agree(trained_vae, digits):
    """The prior and the trained guide are both valid proposals for this 4-d latent model, so
    both estimates converge to the same log p(x); their paired per-point difference at K=1000
    must be within 4 standard errors of zero. (On this model the prior is even the better-tailed
    proposal: its k-hat is lower, since the fitted guide is narrower than the posterior.)"""
    model, guide = trained_vae
    x = digits.test[:100]
    good = pg.log_likelihood(model, guide, x, 1000, seed=0)
    prior = pg.log_likelihood(model, pg.create_guide("prior", model), x, 1000, seed=0)
    diff = good.per_point - prior.per_point
    assert abs(float(diff.mean())) < 4 * float(diff.std() / math.sqrt(diff.numel()))
    assert prior.elbo_mean < good.elbo_mean - 1, "the prior's ELBO is far looser than the guide's"


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_bad_k_is_refused(trained_vae, digits, k):
    model, guide = trained_vae
    with pytest.raises(pg.ConfigError, match="positive integer"):
        pg.log_likelihood(model, guide, digits.test[:5], k)


def test_bad_data_is_refused(trained_vae, digits):
    model, guide = trained_vae
    with pytest.raises(pg.DataError, match=r"point shape \(64,\).*\(1, 8, 8\)"):
        pg.log_likelihood(model, guide, digits.test.reshape(-1, 64), 10)
    bad = digits.test[:5].clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(pg.DataError, match="first in row 3"):
        pg.log_likelihood(model, guide, bad, 10)
    with pytest.raises(pg.DataError, match="empty"):
        pg.log_likelihood(model, guide, digits.test[:0], 10)

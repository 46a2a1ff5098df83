"""Annealed importance sampling against exact log-likelihoods (PPCA), and its edge cases."""

from __future__ import annotations

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.ais import ais_log_likelihood, annealing_schedule


@pytest.fixture(scope="module")
def ppca():
    torch.manual_seed(0)
    model = pg.create_model("ppca", (8,), latent_dim=3)
    x = torch.randn(300, 3) @ torch.randn(3, 8) + 0.3 * torch.randn(300, 8)
    model.fit_closed_form(x)
    points = x[:12]
    return model, points, model.exact_log_likelihood(points).detach()


def test_one_step_is_plain_importance_sampling(ppca):
    model, x, _ = ppca
    prior = pg.create_guide("prior", model)
    ais = ais_log_likelihood(model, prior, x, num_chains=32, num_steps=1, seed=3, khat=False)
    plain = pg.log_likelihood(model, prior, x, 32, seed=3, khat=False)
    torch.testing.assert_close(ais.per_point, plain.per_point)


def test_annealing_from_the_prior_reaches_the_exact_log_likelihood(ppca):
    """Prior IS is off by many nats here; AIS with 150 steps is within Monte Carlo error of the
    exact log p(x) (a stochastic lower bound: its gap is >= 0 up to noise)."""
    model, x, exact = ppca
    prior = pg.create_guide("prior", model)
    plain_gap = float((exact - pg.log_likelihood(model, prior, x, 16, seed=0, khat=False).per_point).mean())
    ais = ais_log_likelihood(model, prior, x, num_chains=16, num_steps=150, seed=0)
    gap = exact - ais.per_point
    se = float(gap.std() / gap.numel() ** 0.5) + float(ais.mc_stderr.mean())
    assert plain_gap > 5, plain_gap  # the test is not trivial: plain IS from the prior is far off
    assert -4 * se < float(gap.mean()) < 0.1 + 4 * se, (float(gap.mean()), se)
    assert bool(((ais.acceptance > 0.3) & (ais.acceptance < 0.95)).all()), ais.acceptance
    assert ais.mc_stderr.shape == ais.per_point.shape == (12,) and ais.khat.shape == (12,)


def test_schedule_and_refusals(ppca, digits):
    betas = annealing_schedule(10)
    assert betas[0] == 0 and betas[-1] == 1 and bool((betas[1:] > betas[:-1]).all())
    model, x, _ = ppca
    with pytest.raises(pg.ConfigError, match="anneal from the prior"):
        ais_log_likelihood(model, pg.create_guide("delta", model), x, num_steps=2)
    gmm = pg.create_model("gmm", (8,), num_components=2)
    with pytest.raises(pg.ConfigError, match="discrete"):
        ais_log_likelihood(gmm, pg.create_guide("prior", gmm), x, num_steps=2)
    with pytest.raises(pg.ConfigError, match="num_steps must be a positive integer"):
        ais_log_likelihood(model, pg.create_guide("prior", model), x, num_steps=0)


def test_ais_runs_on_a_vae_from_its_encoder(trained_vae, digits):
    model, guide = trained_vae
    x = digits.test[:6]
    ais = ais_log_likelihood(model, guide, x, num_chains=8, num_steps=20, seed=0, khat=False)
    plain = pg.log_likelihood(model, guide, x, 8, seed=0, khat=False)
    assert bool(torch.isfinite(ais.per_point).all())
    assert float(ais.per_point.mean()) > float(plain.elbo.mean())  # tighter than the ELBO


def test_bdmc_sandwiches_the_exact_log_likelihood_and_tightens_with_more_steps(ppca):
    from pyro_genmod.ais import bdmc

    model, _, _ = ppca
    prior = pg.create_guide("prior", model)
    short = bdmc(model, prior, num_points=12, num_chains=4, num_steps=5, seed=0)
    long = bdmc(model, prior, num_points=12, num_chains=4, num_steps=100, seed=0)
    for result in (short, long):
        exact = model.exact_log_likelihood(result.x).detach()
        below, above = exact - result.lower, result.upper - exact
        for side in (below, above):  # each bound on its side of the truth, up to 4 standard errors
            assert float(side.mean()) > -4 * float(side.std() / side.numel() ** 0.5) - 0.05
    assert float(long.gap.mean()) < float(short.gap.mean()) / 3


def test_log_likelihood_method_ais_is_the_ais_estimate(ppca):
    model, x, _ = ppca
    prior = pg.create_guide("prior", model)
    via = pg.log_likelihood(model, prior, x, 8, method="ais", num_steps=10, seed=1, khat=False)
    direct = ais_log_likelihood(model, prior, x, 8, 10, seed=1, khat=False)
    torch.testing.assert_close(via.per_point, direct.per_point)
    assert via.acceptance is not None and via.mc_stderr.shape == (12,)
    with pytest.raises(pg.ConfigError, match="unknown scoring method"):
        pg.log_likelihood(model, prior, x, 8, method="nuts")

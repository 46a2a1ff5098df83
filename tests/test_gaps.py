"""Inference gaps on PPCA, where log p(x) and p(z|x) are known exactly, and `genmod gaps`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.cli import main
from pyro_genmod.experiment import run_experiment
from pyro_genmod.guides.local import LocalParameters, fit_local


@pytest.fixture(scope="module")
def ppca():
    """A 6-dimensional PPCA with 2 latents whose loadings overlap (so p(z|x) is strongly
    correlated), and 30 points drawn from it."""
    model = pg.create_model("ppca", (6,), latent_dim=2)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(6, 2, generator=generator) @ torch.tensor([[1.0, 0.9], [0.0, 0.4]]))
    x = pg.sample(model, 30, seed=3).detach()
    return model, x, model.exact_log_likelihood(x).detach()


def _within(values: torch.Tensor, target: float, floor: float) -> bool:
    """|mean - target| <= 4 standard errors over points, plus a float32 rounding floor."""
    values = values.double()
    stderr = float(values.std() / math.sqrt(values.numel()))
    return abs(float(values.mean()) - target) <= 4 * stderr + floor


def test_exact_posterior_has_no_gaps(ppca):
    model, x, exact = ppca
    gaps = pg.inference_gaps(model, pg.create_guide("exact_posterior", model), x, num_samples=200)
    # Every importance weight is p(x), so log p(x), the ELBO and the exact value agree up to
    # float32 rounding of log-densities near -10 (1e-4 nats).
    assert _within(gaps.approximation, 0.0, 1e-4) and _within(gaps.amortization, 0.0, 1e-4)
    assert torch.allclose(gaps.log_px, exact, atol=1e-4)
    assert "no per-point parameters" in gaps.local


def test_full_rank_local_optimum_is_the_exact_posterior(ppca):
    model, x, exact = ppca
    torch.manual_seed(0)
    guide = pg.create_guide("full_rank", model)  # untrained encoder: a large amortization gap
    gaps = pg.inference_gaps(model, guide, x, num_samples=2000, steps=300, seed=0)
    # A full-rank Gaussian family contains p(z|x), so the local ELBO reaches the exact log p(x)
    # (within 4 SE over points; 2e-3 nats allows the optimizer's last steps).
    assert _within(exact - gaps.elbo_local, 0.0, 2e-3)
    assert _within(gaps.approximation, 0.0, 2e-3)
    s = gaps.summary()
    assert s["amortization"] > 4 * s["amortization_stderr"] and s["amortization"] > 0.5
    assert torch.allclose(gaps.total, gaps.approximation + gaps.amortization, atol=1e-5)


def test_mean_field_approximation_gap_is_the_closed_form_kl(ppca):
    model, x, exact = ppca
    torch.manual_seed(0)
    guide = pg.create_guide("mean_field", model)
    gaps = pg.inference_gaps(model, guide, x, num_samples=2000, steps=300, seed=0)
    # p(z|x) = N(m, L^-1) with the same precision L = I + W^T W / sigma^2 at every x; the best
    # diagonal Gaussian has variances 1/L_ii, and its KL is (sum_i log L_ii - log det L) / 2.
    with torch.no_grad():
        precision = torch.eye(2) + model.weight.T @ model.weight / model.noise_variance[0]
        kl = 0.5 * float(precision.diagonal().log().sum() - torch.logdet(precision))
    assert kl > 0.1  # the posterior is correlated, so the gap is real
    assert _within(exact - gaps.elbo_local, kl, 2e-3)
    # The too-narrow mean-field proposal makes the IS estimate of log p(x) fall short of the
    # exact value (IS is a stochastic lower bound), so the estimated gap lies in (0, KL].
    s = gaps.summary()
    assert 4 * s["approximation_stderr"] < s["approximation"] <= kl + 4 * s["approximation_stderr"]
    assert float((gaps.log_px - exact).mean()) <= 0.0


def test_local_optimization_improves_a_trained_vae(trained_vae, digits):
    model, guide = trained_vae
    x = digits.test[:10]
    gaps = pg.inference_gaps(model, guide, x, num_samples=500, steps=200, seed=0)
    s = gaps.summary()
    assert s["amortization"] > 4 * s["amortization_stderr"]  # the encoder is not per-point optimal
    assert bool((gaps.approximation >= 0).all())  # log-mean-exp >= mean on the same draws
    params = fit_local(model, x, guide, steps=2).variational_parameters(x).detach()
    assert params.shape == guide.variational_parameters(x).shape
    with pytest.raises(ValueError, match="parameters for"):
        LocalParameters(guide, params[:3])(x)


def test_refuses_point_estimates_and_discrete_latents(ppca):
    model, x, _ = ppca
    with pytest.raises(pg.ConfigError, match="point estimate"):
        pg.inference_gaps(model, pg.create_guide("delta", model), x)
    gmm = pg.create_model("gmm", (2,))
    with pytest.raises(pg.ConfigError, match="continuous latent"):
        pg.inference_gaps(gmm, pg.create_guide("categorical", gmm), torch.zeros(2, 2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("gap-runs")
    for guide in ("mean_field", "delta"):
        run_experiment(
            "vae", guide, digits, model_options={"latent_dim": 2}, num_samples=20, out=folder / guide,
            epochs=1, batch_size=256, progress=False,
        )
    return folder


def test_cli_gaps_prints_each_gap(runs, capsys):
    code = main(["gaps", str(runs / "mean_field"), "--points", "5", "-K", "100", "--steps", "20", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for label in ("log p(x), IS", "ELBO, local", "ELBO, amortized", "approximation gap", "amortization gap"):
        assert label in captured.out
    assert main(["gaps", str(runs / "mean_field"), "--points", "3", "-K", "50", "--steps", "5", "--json", "--quiet"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["num_points"] == 3 and np.isfinite(summary["total"])


def test_cli_gaps_refuses_point_estimate_run(runs, capsys):
    assert main(["gaps", str(runs / "delta"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genmod: error:") and "point estimate" in err and "\n" not in err

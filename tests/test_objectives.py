"""Objectives: Pyro's ELBO adapters against closed forms, and IWAE with its DReG gradient."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import kl_divergence

import pyro_genmod as pg
from pyro_genmod.cli import main
from pyro_genmod.objectives import get_objective


@pytest.fixture(scope="module")
def small_vae(digits):
    """A small VAE + mean-field pair trained for 3 epochs, and a fixed batch."""
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=3, hidden=(32,))
    guide = pg.create_guide("mean_field", model, hidden=(32,))
    pg.fit(model, guide, digits, epochs=3, progress=False)
    return model, guide, digits.test[:16]


@pytest.fixture(scope="module")
def mixture():
    """A 3-component Gaussian mixture with a categorical q(k|x): its ELBO is a finite sum."""
    torch.manual_seed(0)
    model = pg.create_model("gmm", (3,), num_components=3)
    guide = pg.create_guide("categorical", model)
    return model, guide, torch.randn(5, 3)


def exact_mixture_elbo(model, guide, x):
    log_q = torch.log_softmax(guide.variational_parameters(x), dim=-1)
    return (log_q.exp() * (model._log_joint(x) - log_q)).sum()


def gradient(objective, model, guide, x, seed):
    torch.manual_seed(seed)
    params = [*model.parameters(), *guide.parameters()]
    for p in params:
        p.grad = None
    differentiable, value = objective(model, guide, x)
    differentiable.backward()
    model_grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    guide_grad = torch.cat([p.grad.flatten() for p in guide.parameters()])
    return model_grad, guide_grad, value


def test_every_objective_is_listed_and_unknown_names_fail():
    # these six at least; each objective added since is checked by its own test file
    assert set(pg.list_objectives()) >= {
        "trace_elbo", "tracemeanfield_elbo", "traceenum_elbo", "tracegraph_elbo", "iwae", "iwae_dreg",
    }
    assert get_objective("Trace_ELBO").name == "trace_elbo"
    with pytest.raises(pg.UnknownNameError, match="unknown objective 'dreg'.*iwae_dreg"):
        get_objective("dreg")


def test_tracemeanfield_uses_the_analytic_kl(small_vae):
    model, guide, x = small_vae
    torch.manual_seed(3)
    _, value = get_objective("tracemeanfield_elbo")(model, guide, x)
    torch.manual_seed(3)  # the same draw of z
    q = guide.posterior(x)["z"]
    z = q.rsample()
    prior = torch.distributions.Normal(torch.zeros(3), 1.0)
    kl = kl_divergence(q.base_dist, prior).sum(-1)
    expected = -(model.likelihood({"z": z}).log_prob(x) - kl).sum()
    assert value == pytest.approx(float(expected.detach()), rel=1e-5)


def test_traceenum_is_the_exact_elbo_and_its_gradient(mixture):
    model, guide, x = mixture
    _, guide_grad, value = gradient(get_objective("traceenum_elbo"), model, guide, x, 0)
    for p in guide.parameters():
        p.grad = None
    (-exact_mixture_elbo(model, guide, x)).backward()
    exact_grad = torch.cat([p.grad.flatten() for p in guide.parameters()])
    assert value == pytest.approx(float(-exact_mixture_elbo(model, guide, x)), rel=1e-5)
    torch.testing.assert_close(guide_grad, exact_grad, atol=1e-4, rtol=1e-4)


def test_tracegraph_reports_the_negative_elbo_and_an_unbiased_score_function_gradient(mixture):
    model, guide, x = mixture
    _, exact_grad, _ = gradient(get_objective("traceenum_elbo"), model, guide, x, 0)
    draws = [gradient(get_objective("tracegraph_elbo", 20), model, guide, x, s) for s in range(120)]
    values = torch.tensor([v for _, _, v in draws])
    target = -float(exact_mixture_elbo(model, guide, x))
    # the mean of 120 estimates is within 4 standard errors of the exact negative ELBO
    assert abs(float(values.mean()) - target) < 4 * float(values.std() / math.sqrt(120))
    torch.manual_seed(5)
    directions = torch.randn(3, exact_grad.numel())
    projected = torch.stack([g for _, g, _ in draws]) @ directions.T
    error = projected.mean(0) - exact_grad @ directions.T
    assert bool((error.abs() < 4 * projected.std(0) / math.sqrt(120)).all()), error


def test_iwae_and_its_dreg_gradient_refuse_discrete_latents(mixture):
    model, guide, x = mixture
    for name in ("iwae", "iwae_dreg", "tracemeanfield_elbo"):
        with pytest.raises(pg.ConfigError, match="latent site 'k' is discrete; use objective='traceenum_elbo'"):
            get_objective(name, 2)(model, guide, x)


def test_iwae_bound_is_tighter_than_the_elbo(small_vae):
    model, guide, x = small_vae
    elbo = torch.tensor([get_objective("trace_elbo")(model, guide, x)[1] for _ in range(30)])
    iwae = torch.tensor([get_objective("iwae", 50)(model, guide, x)[1] for _ in range(30)])
    # losses are negative bounds: IWAE-50's must be lower, by more than 4 standard errors
    difference = float(elbo.mean() - iwae.mean())
    assert difference > 4 * math.sqrt(float(elbo.var() + iwae.var()) / 30)


@pytest.mark.parametrize("num_particles", [5, 50])
def test_dreg_matches_iwae_in_value_model_gradient_and_mean_guide_gradient(small_vae, num_particles):
    model, guide, x = small_vae
    iwae, dreg = get_objective("iwae", num_particles), get_objective("iwae_dreg", num_particles)
    plain = [gradient(iwae, model, guide, x, s) for s in range(60)]
    doubly = [gradient(dreg, model, guide, x, s) for s in range(60)]
    for (m1, _, v1), (m2, _, v2) in zip(plain, doubly):  # the same seed draws the same z
        assert v1 == pytest.approx(v2, rel=1e-5)
        torch.testing.assert_close(m1, m2, atol=1e-4, rtol=1e-4)
    plain_guide = torch.stack([g for _, g, _ in plain])
    dreg_guide = torch.stack([g for _, g, _ in doubly])
    torch.manual_seed(1)
    directions = torch.randn(3, plain_guide.shape[1])
    a, b = plain_guide @ directions.T, dreg_guide @ directions.T
    se = ((a.var(0) + b.var(0)) / 60).sqrt()
    # same expectation: the two means differ by less than 4 standard errors in each direction
    assert bool(((a.mean(0) - b.mean(0)).abs() < 4 * se).all()), (a.mean(0), b.mean(0), se)
    # lower variance (seen: 60x at K=5, 150x at K=50); ask for a factor of 4
    assert float(dreg_guide.var(0).sum()) < float(plain_guide.var(0).sum()) / 4


@pytest.mark.parametrize("guide_name", ["bottom_up", "top_down"])
def test_dreg_is_unbiased_through_dependent_sites(digits, guide_name):
    """DReG keeps the IWAE gradient's mean when one site's q depends on another site's draw."""
    torch.manual_seed(0)
    model = pg.create_model("vae2", digits, latent_dims=(3, 2), hidden=(16, 8))
    guide = pg.create_guide(guide_name, model, hidden=(16,))
    x = digits.test[:8]
    plain = torch.stack([gradient(get_objective("iwae", 5), model, guide, x, s)[1] for s in range(80)])
    doubly = torch.stack([gradient(get_objective("iwae_dreg", 5), model, guide, x, s)[1] for s in range(80)])
    torch.manual_seed(2)
    directions = torch.randn(4, plain.shape[1])
    a, b = plain @ directions.T, doubly @ directions.T
    se = ((a.var(0) + b.var(0)) / 80).sqrt()
    assert bool(((a.mean(0) - b.mean(0)).abs() < 4 * se).all()), (a.mean(0), b.mean(0), se)
    assert float(doubly.var(0).sum()) < float(plain.var(0).sum())


def test_dreg_refuses_flows_that_only_score_their_own_samples(small_vae):
    model, _, x = small_vae
    with pytest.raises(pg.ConfigError, match="guide 'planar' cannot do; use objective='iwae'"):
        get_objective("iwae_dreg", 4)(model, pg.create_guide("planar", model), x)


@pytest.mark.parametrize("guide_name", ["iaf", "spline", "full_rank", "local"])
def test_dreg_trains_invertible_and_local_guides(small_vae, guide_name):
    model, _, x = small_vae
    guide = pg.create_guide(guide_name, model, hidden=(32,))
    differentiable, value = get_objective("iwae_dreg", 4)(model, guide, x)
    differentiable.backward()
    assert math.isfinite(value)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.parameters())


@pytest.mark.parametrize("objective", ["tracemeanfield_elbo", "tracegraph_elbo", "iwae", "iwae_dreg"])
def test_fit_takes_every_objective(digits, objective):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=2, hidden=(16,))
    guide = pg.create_guide("mean_field", model, hidden=(16,))
    result = pg.fit(model, guide, digits, epochs=2, batch_size=512, objective=objective, num_particles=3, progress=False)
    assert result.options["objective"] == objective
    assert result.history[-1]["train_elbo"] > result.history[0]["train_elbo"] - 5
    assert all(math.isfinite(h["val_elbo"]) for h in result.history)


def test_cli_trains_with_the_dreg_objective(tmp_path, capsys):
    code = main([
        "train", "--model", "vae", "--guide", "iaf", "--epochs", "1", "--objective", "iwae_dreg",
        "--num-particles", "3", "-K", "10", "--latent-dim", "2", "--quiet", "--out", str(tmp_path / "run"),
    ])
    assert code == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert '"objective": "iwae_dreg"' in json.dumps(config)
    assert math.isfinite(metrics["test_log_likelihood"])
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--objective", "nope", "--quiet", "--out", str(tmp_path / "r2")]) == 2
    assert "unknown objective 'nope'" in capsys.readouterr().err

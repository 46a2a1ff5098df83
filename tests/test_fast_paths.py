"""The trace-free fast paths give Pyro's numbers: Trace_ELBO loss and gradients, IS log weights."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

import pyro_genmod as pg
from pyro_genmod import densities, distributions
from pyro_genmod.objectives import get_objective
from pyro_genmod.optim import create_optimizer
from pyro_genmod.train import parameters
from pyro_genmod.guides.mean_field import MeanField

SHAPE = (1, 8, 8)


def _pair(guide: str, seed: int = 0, **model_options):
    torch.manual_seed(seed)
    model = pg.create_model("vae", SHAPE, latent_dim=3, hidden=(16,), **model_options)
    return model, pg.create_guide(guide, model)


def _batch(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(seed))


def _loss_and_grads(loss_fn, model, guide, x, seed: int):
    """Run ``loss_fn`` on draws seeded with ``seed``; return the loss and every parameter's gradient."""
    params = parameters(model, guide)
    for p in params:
        p.grad = None
    torch.manual_seed(seed)
    loss = loss_fn(model, guide, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _assert_same(a, b) -> None:
    # Same draws and the same float32 arithmetic up to summation order: agreement to ~1e-6
    # relative; 1e-5 leaves room for the order of the per-site sums.
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-5)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)


def _vae_guides() -> list[str]:
    """Every registered guide that fits the VAE, is a density and has only reparameterized sites."""
    names = []
    for name in pg.list_guides():
        model, guide = _pair(name) if pg.pairing_problem(name, _pair("mean_field")[0]) is None else (None, None)
        if guide is not None and densities.supports_fast_elbo(model, guide, _batch(2)):
            names.append(name)
    return names


@pytest.mark.parametrize("guide_name", _vae_guides())
def test_fast_elbo_equals_trace_elbo(guide_name):
    """Same loss and same gradients as Pyro's Trace_ELBO on the same random draws."""
    model, guide = _pair(guide_name)
    x = _batch()
    pyro_elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    reference = _loss_and_grads(pyro_elbo.differentiable_loss, model, guide, x, seed=5)
    _assert_same(_loss_and_grads(densities.elbo_loss, model, guide, x, seed=5), reference)
    assert any(float(g.abs().sum()) > 0 for g in reference[1]), "gradients must reach the parameters"


def test_core_guides_take_the_fast_path():
    assert {"mean_field", "full_rank", "delta"} <= set(_vae_guides())


def test_vectorized_particles_and_gaussian_likelihood():
    """num_particles > 1 is Pyro's vectorize_particles layout: the same draws, the same mean."""
    model, guide = _pair("mean_field", likelihood="gaussian")
    x = torch.randn(10, *SHAPE)
    pyro_elbo = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    reference = _loss_and_grads(pyro_elbo.differentiable_loss, model, guide, x, seed=2)
    mine = _loss_and_grads(lambda m, g, b: densities.elbo_loss(m, g, b, num_particles=4), model, guide, x, seed=2)
    _assert_same(mine, reference)


def test_trace_elbo_objective_uses_the_fast_path_and_matches_pyro():
    """What ``fit`` calls: the objective's value and gradients equal Pyro's, with or without the fast path."""
    model, guide = _pair("mean_field")
    x = _batch()
    objective = get_objective("trace_elbo")
    calls = []
    original = densities.elbo_loss
    densities.elbo_loss = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        mine = _loss_and_grads(lambda m, g, b: objective(m, g, b)[0], model, guide, x, seed=9)
    finally:
        densities.elbo_loss = original
    assert calls, "trace_elbo should take the fast path for a reparameterized guide"
    slow = get_objective("trace_elbo")
    slow.use_fast = False
    _assert_same(mine, _loss_and_grads(lambda m, g, b: slow(m, g, b)[0], model, guide, x, seed=9))
    value = objective(model, guide, x)[1]
    assert isinstance(value, float) and value > 0, "the value is the negative ELBO summed over the batch"


class _ScoreFunctionGuide(MeanField):
    """Mean-field Normal whose draws are not reparameterized: Trace_ELBO adds a score-function term."""

    registry_name = "score_function_test"

    def site_distribution(self, params, size):
        loc, raw = params.split(size, dim=-1)
        scale_tril = torch.diag_embed(torch.nn.functional.softplus(raw) + 1e-4)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril).has_rsample_(False)


def test_non_reparameterized_guide_falls_back_to_pyro():
    torch.manual_seed(0)
    model = pg.create_model("vae", SHAPE, latent_dim=3, hidden=(16,))
    guide = _ScoreFunctionGuide(model, hidden=(16,))
    x = _batch()
    assert not densities.supports_fast_elbo(model, guide, x)
    with pytest.raises(densities.FastPathUnsupported, match="not reparameterized"):
        densities.elbo_loss(model, guide, x)
    # the probe leaves the RNG alone, so the objective's first step uses Pyro's own draws
    pyro_elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    reference = _loss_and_grads(pyro_elbo.differentiable_loss, model, guide, x, seed=3)
    objective = get_objective("trace_elbo")
    _assert_same(_loss_and_grads(lambda m, g, b: objective(m, g, b)[0], model, guide, x, seed=3), reference)


def _traced_log_weights(model, guide, x, num_particles):
    """The reference scorer: Pyro traces of the guide and of the model replayed against it."""
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    def total(trace):
        return sum(site["fn"].log_prob(site["value"]) for site in trace.nodes.values()
                   if site["type"] == "sample" and not site_is_subsample(site))

    return (total(model_trace) - total(guide_trace)).expand(num_particles, x.shape[0])


@pytest.mark.parametrize("guide_name", ["mean_field", "full_rank", "prior"])
@pytest.mark.parametrize("k", [1, 7])
def test_fast_scorer_equals_traced_scorer(guide_name, k):
    model, guide = _pair(guide_name)
    x = _batch(9)
    torch.manual_seed(4)
    mine = pg.log_importance_weights(model, guide, x, k)
    torch.manual_seed(4)
    reference = _traced_log_weights(model, guide, x, k)
    assert mine.shape == reference.shape == (k, 9)
    torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)



def test_fused_adam_takes_the_same_steps_as_adam():
    """``fit``'s default optimizer: the fused kernel computes Adam's update (to float32 rounding)."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3)]
    runs = []
    for make in (create_optimizer, lambda p, lr: torch.optim.Adam(p, lr=lr)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(params, 0.01)
        for step in range(5):
            optimizer.zero_grad()
            sum(((p - step) ** 2).sum() for p in params).backward()
            optimizer.step()
        runs.append(params)
    assert runs[0][0].grad is not None
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert not torch.equal(a.detach(), start[0] if a.shape == start[0].shape else start[1])


def test_validation_is_off_only_inside_the_fast_path():
    from torch.distributions import Distribution

    model, guide = _pair("mean_field")
    before = Distribution._validate_args
    densities.elbo_loss(model, guide, _batch(3))
    assert Distribution._validate_args == before
    with pytest.raises(ValueError):  # outside, a bad scale is still refused
        dist.Normal(torch.zeros(2), -torch.ones(2), validate_args=None if before else True)


def test_outer_pyro_handlers_are_honoured_by_the_fast_loss():
    """A user's poutine.scale around the loss reaches every site, as it would in Trace_ELBO."""
    import pyro
    from pyro import poutine

    from pyro_genmod import densities

    torch.manual_seed(0)
    model = pg.create_model("vae", (1, 4, 4), latent_dim=3, hidden=(8,))
    guide = pg.create_guide("mean_field", model, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5))
    with poutine.scale(scale=0.25):
        torch.manual_seed(1)
        fast_loss = densities.elbo_loss(model, guide, x)
        torch.manual_seed(1)
        pyro_loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    torch.manual_seed(1)
    unscaled = densities.elbo_loss(model, guide, x)
    assert float(fast_loss) == pytest.approx(float(pyro_loss), rel=1e-5)
    assert float(fast_loss) == pytest.approx(0.25 * float(unscaled), rel=1e-5)


def test_standard_normal_prior_is_normal_zero_one():
    """The cheaper prior log-density is Normal(0, 1)'s, for every shape a plate can give it,
    and torch's KL registry (TraceMeanField_ELBO's closed form) still sees a Normal."""
    from pyro_genmod.distributions import StandardNormal, standard_normal

    reference = dist.Normal(torch.zeros(4), torch.ones(4)).to_event(1)
    prior = standard_normal(4)
    z = torch.randn(3, 5, 4)
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z), rtol=1e-6, atol=1e-6)
    expanded = prior.expand((5,))
    assert isinstance(expanded.base_dist, StandardNormal) and expanded.batch_shape == (5,)
    torch.testing.assert_close(expanded.log_prob(z), reference.expand((5,)).log_prob(z), rtol=1e-6, atol=1e-6)
    assert StandardNormal((4,)).log_prob(torch.tensor(0.5)).shape == (4,)  # a scalar broadcasts
    q = dist.Normal(torch.randn(4), torch.rand(4) + 0.5).to_event(1)
    torch.testing.assert_close(
        torch.distributions.kl_divergence(q, prior), torch.distributions.kl_divergence(q, reference)
    )
    assert standard_normal(4) is standard_normal((4,))  # one cached object per shape, dtype, device
    assert standard_normal(4, like=torch.zeros((), dtype=torch.float64)).base_dist.loc.dtype == torch.float64


def test_rsample_with_log_prob_is_rsample_then_log_prob():
    """The eps-form log q(z) for a Normal: the same draw, value and gradient as rsample + log_prob."""
    loc = torch.randn(6, 3, requires_grad=True)
    raw = torch.randn(6, 3, requires_grad=True)
    results = []
    for direct in (True, False):
        q = dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1)
        torch.manual_seed(3)
        if direct:
            z, log_q = distributions.rsample_with_log_prob(q)
        else:
            z = q.rsample()
            log_q = q.log_prob(z)
        grads = torch.autograd.grad((z.sum() + log_q.sum()), (loc, raw))
        results.append((z.detach(), log_q.detach(), grads))
    (z1, lq1, g1), (z2, lq2, g2) = results
    assert torch.equal(z1, z2)
    torch.testing.assert_close(lq1, lq2, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


MODEL_LIKELIHOODS = [(name, None) for name in pg.list_models()] + [
    ("vae", lik) for lik in ("gaussian", "continuous_bernoulli", "discretized_logistic")
] + [("vae2", "gaussian")]


@pytest.mark.parametrize(("model_name", "likelihood"), MODEL_LIKELIHOODS)
def test_likelihood_log_prob_is_the_likelihoods_log_prob(model_name, likelihood):
    """Every model's direct log p(x | z) (what the trace-free step calls) is its distribution's."""
    torch.manual_seed(0)
    options = {} if likelihood is None else {"likelihood": likelihood}
    model = pg.create_model(model_name, SHAPE, **options)
    x = _batch(5) if likelihood in (None, "continuous_bernoulli", "discretized_logistic") else torch.randn(5, *SHAPE)
    with torch.no_grad(), poutine.trace() as tr:  # a joint draw gives latents of every site's shape
        model(x)
    latents = {name: site["value"] for name, site in tr.trace.nodes.items()
               if site["type"] == "sample" and not site["is_observed"]}
    direct = model.likelihood_log_prob(latents, x)
    assert direct.shape == (5,)
    # the same float32 terms summed over 64 pixels in another order (values up to ~1e2)
    torch.testing.assert_close(direct, model.likelihood(latents).log_prob(x), rtol=1e-6, atol=1e-4)


def _models_with_mean_field() -> list[str]:
    return [name for name in pg.list_models() if pg.pairing_problem("mean_field", pg.create_model(name, SHAPE)) is None]


@pytest.mark.parametrize("model_name", _models_with_mean_field())
def test_fast_elbo_equals_trace_elbo_for_every_model(model_name):
    """Each model's fast route (prior_distributions scored directly, or prior() replayed; the
    model's likelihood_log_prob) gives Trace_ELBO's loss and gradients on the same draws."""
    torch.manual_seed(0)
    model = pg.create_model(model_name, SHAPE)
    guide = pg.create_guide("mean_field", model)
    x = _batch()
    pyro_elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    reference = _loss_and_grads(pyro_elbo.differentiable_loss, model, guide, x, seed=7)
    _assert_same(_loss_and_grads(densities.elbo_loss, model, guide, x, seed=7), reference)


def test_default_prior_samples_prior_distributions():
    """A model that gives prior_distributions gets prior(): one sample site per entry."""
    model = pg.create_model("vae", SHAPE, latent_dim=3)
    with poutine.trace() as tr, pyro.plate("data", 4):
        values = model.prior()
    assert set(values) == {"z"} and values["z"].shape == (4, 3)
    assert tr.trace.nodes["z"]["fn"].base_dist.batch_shape == (4, 3)
    with pytest.raises(NotImplementedError, match="prior_distributions"):
        pg.models.base.GenerativeModel((2,)).prior()

"""The ``prior`` option (pyro_genmod/priors.py): the VampPrior on any VAE-family model trains,
round-trips through a run folder, scores like the ``vamp`` model and matches log p(x) by quadrature."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_genmod as pg
from pyro_genmod import densities
from pyro_genmod.experiment import run_experiment
from pyro_genmod.priors import DiagonalGaussianMixture, StandardNormalPrior, VampMixturePrior
from pyro_genmod.train import parameters

VAMP = {"prior": "vamp", "num_pseudo": 6, "encoder_hidden": (16,)}


@pytest.fixture(scope="module")
def tiny(digits) -> pg.Dataset:
    return pg.Dataset(name="digits", train=digits.train[:64], val=digits.val[:16], test=digits.test[:16],
                      binarization=digits.binarization, train_labels=digits.train_labels[:64],
                      val_labels=digits.val_labels[:16], test_labels=digits.test_labels[:16],
                      options=dict(digits.options))


@pytest.mark.parametrize(("name", "options"), [
    ("vae", {"latent_dim": 3, "hidden": (16,)}),
    ("vae2", {"latent_dims": (4, 2), "hidden": (16, 8)}),
    ("cvae", {"latent_dim": 3, "hidden": (16,)}),
])
def test_vamp_prior_option_trains(name, options, tiny):
    torch.manual_seed(0)
    model = pg.create_model(name, tiny, **options, **VAMP)
    assert isinstance(model.latent_prior, VampMixturePrior) and model.init_kwargs["prior"] == "vamp"
    guide = pg.create_guide("mean_field", model)
    before = model.latent_prior.pseudo_inputs.detach().clone()
    result = pg.fit(model, guide, tiny, epochs=2, batch_size=32, progress=False)
    assert all(math.isfinite(h["val_elbo"]) for h in result.history)
    assert not torch.equal(before, model.latent_prior.pseudo_inputs)  # the prior is learned


def test_standard_prior_is_the_default():
    model = pg.create_model("vae", (1, 8, 8), latent_dim=3)
    assert isinstance(model.latent_prior, StandardNormalPrior) and not list(model.latent_prior.parameters())
    p = model.prior_distributions()["z"]
    z = torch.randn(5, 3)
    torch.testing.assert_close(p.log_prob(z), dist.Normal(0.0, 1.0).log_prob(z).sum(-1))


@pytest.mark.parametrize(("name", "options", "site"), [
    ("vae", {"latent_dim": 3, "hidden": (16,)}, "z"),
    ("vae2", {"latent_dims": (4, 2), "hidden": (16, 8)}, "z2"),
])
def test_vamp_prior_is_the_mixture_and_the_fast_path_matches_trace_elbo(name, options, site):
    torch.manual_seed(0)
    model = pg.create_model(name, (1, 8, 8), **options, **VAMP)
    guide = pg.create_guide("mean_field", model)
    loc, scale = model.latent_prior.components()
    reference = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(6)), dist.Normal(loc, scale).to_event(1))
    z = 2 * torch.randn(11, loc.shape[-1])
    fn = poutine.trace(model.prior).get_trace().nodes[site]["fn"]
    assert isinstance(fn, DiagonalGaussianMixture)
    torch.testing.assert_close(fn.log_prob(z), reference.log_prob(z), rtol=1e-5, atol=1e-5)
    # the trace-free loss (prior_distributions, or prior() replayed) is Trace_ELBO's, gradients too
    x = torch.bernoulli(torch.full((12, 1, 8, 8), 0.4), generator=torch.Generator().manual_seed(1))
    pseudo = model.latent_prior.pseudo_inputs
    results = []
    for loss_fn in (densities.elbo_loss, pyro.infer.Trace_ELBO(max_plate_nesting=1).differentiable_loss):
        for p in parameters(model, guide):
            p.grad = None
        torch.manual_seed(7)
        loss = loss_fn(model, guide, x)
        loss.backward()
        results.append((loss.detach(), pseudo.grad.clone()))
    (fast, fast_grad), (traced, traced_grad) = results
    torch.testing.assert_close(fast, traced, rtol=1e-5, atol=1e-5)
    assert fast_grad.abs().sum() > 0
    torch.testing.assert_close(fast_grad, traced_grad, rtol=1e-4, atol=1e-6)


def test_vae_with_vamp_prior_scores_like_the_vamp_model_on_the_same_weights():
    torch.manual_seed(0)
    options = {"latent_dim": 3, "hidden": (16,), "num_pseudo": 6, "encoder_hidden": (16,)}
    vae = pg.create_model("vae", (1, 8, 8), prior="vamp", **options)
    vamp = pg.create_model("vamp", (1, 8, 8), **options)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the shared initial state
    vamp.load_state_dict(vae.state_dict())  # one prior module, so the same parameter names
    guide = pg.create_guide("mean_field", vae)
    x = torch.bernoulli(torch.full((10, 1, 8, 8), 0.4), generator=torch.Generator().manual_seed(2))
    a = pg.log_likelihood(vae, guide, x, 50, seed=3)
    b = pg.log_likelihood(vamp, guide, x, 50, seed=3)
    torch.testing.assert_close(a.per_point, b.per_point, rtol=0, atol=1e-5)
    torch.testing.assert_close(vamp.components()[0], vae.latent_prior.components()[0])


def test_is_log_likelihood_equals_quadrature_under_the_vamp_prior():
    """One latent dimension: log p(x) = log int p(x|z) p(z) dz by a Riemann sum on a fine grid,
    against the IS estimate with the prior as proposal (unbiased for p(x)); the tolerance is four
    standard errors of the estimate of p(x), relative."""
    torch.manual_seed(0)
    model = pg.create_model("vae", (3,), latent_dim=1, hidden=(8,), likelihood="gaussian", scale=1.0,
                            prior="vamp", num_pseudo=4, encoder_hidden=(8,))
    with torch.no_grad():
        model.latent_prior.pseudo_inputs.copy_(3 * torch.randn(4, 3))  # well-separated components
        x = model(num_samples=6)
        grid = torch.linspace(-15, 15, 30001).unsqueeze(-1)  # (G, 1)
        log_joint = model.likelihood({"z": grid.unsqueeze(-2)}).log_prob(x) + model.prior_distributions()[
            "z"].log_prob(grid).unsqueeze(-1)  # (G, N)
        exact = torch.logsumexp(log_joint, 0) + math.log(30 / 30000)
        guide = pg.create_guide("prior", model)
        num = 20000
        estimate = pg.log_likelihood(model, guide, x, num, seed=0).per_point
        log_w = pg.log_importance_weights(model, guide, x, num)  # (K, N), for the standard error
        w = (log_w - log_w.max(0).values).exp()
        relative_se = w.std(0) / w.mean(0) / math.sqrt(num)
    assert relative_se.max() < 0.05
    assert bool(((estimate - exact).exp().sub(1).abs() < 4 * relative_se).all()), (estimate, exact, relative_se)


def test_run_folder_round_trips_the_prior(tiny, tmp_path):
    options = {"latent_dim": 3, "hidden": [16], **VAMP, "encoder_hidden": [16]}
    _, result, folder = run_experiment(
        "vae", "mean_field", tiny, model_options=options, guide_options={"encoder": "conv", "channels": 4},
        num_samples=20, out=tmp_path / "run", epochs=1, batch_size=32, progress=False,
    )
    run = pg.load_run(folder, data=tiny)
    assert run.config["model"]["options"]["prior"] == "vamp" and run.config["guide"]["options"]["encoder"] == "conv"
    assert isinstance(run.model.latent_prior, VampMixturePrior) and run.model.latent_prior.num_pseudo == 6
    for key, value in result.model.state_dict().items():
        assert torch.equal(run.model.state_dict()[key], value), key
    x = tiny.test
    saved = pg.log_likelihood(result.model.eval(), result.guide.eval(), x, 20, seed=5).per_point
    loaded = pg.log_likelihood(run.model, run.guide, x, 20, seed=5).per_point
    torch.testing.assert_close(saved, loaded, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "options", "match"), [
    ("vae", {"prior": "gaussian_mixture"}, "unknown prior 'gaussian_mixture'"),
    ("vae", {"num_pseudo": 10}, "num_pseudo applies to prior='vamp' only"),
    ("vae2", {"encoder_hidden": (8,)}, "encoder_hidden applies to prior='vamp' only"),
    ("vae", {"prior": "vamp", "num_pseudo": 0}, "num_pseudo must be a positive integer"),
    ("flow_prior", {"prior": "vamp"}, "has a prior of its own"),
    ("ae", {"prior": "vamp"}, "has a prior of its own"),
    ("vamp", {"prior": "standard"}, "use model 'vae'"),
    ("m2", {"prior": "vamp"}, "has no option 'prior'"),
])
def test_bad_prior_options_raise_config_error(name, options, match):
    with pytest.raises(pg.ConfigError, match=match) as caught:
        pg.create_model(name, (1, 8, 8), **options)
    assert "\n" not in str(caught.value)

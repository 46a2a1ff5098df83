"""Model-specific behaviour of the VAE family: likelihoods, decoders, priors, ae and cvae."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_genmod as pg
from pyro_genmod.errors import ConfigError, DataError
from pyro_genmod.importance import log_importance_weights
from pyro_genmod.likelihoods import DiscretizedLogisticDistribution, create_likelihood
from pyro_genmod.models.vae import ConvDecoder
from pyro_genmod.tasks import encode, sample

FAMILY = {
    # model: (options, guide that fits it, dataset options)
    "vae": ({"latent_dim": 3, "hidden": (32,)}, "mean_field", {}),
    "ae": ({"latent_dim": 3, "hidden": (32,)}, "delta", {}),
    "vae2": ({"latent_dims": (6, 3), "hidden": (32, 16)}, "bottom_up", {}),
    "vamp": ({"latent_dim": 3, "hidden": (32,), "num_pseudo": 20, "encoder_hidden": (32,)}, "mean_field", {}),
    "flow_prior": ({"latent_dim": 3, "hidden": (32,), "num_flows": 2}, "mean_field", {}),
    "cvae": ({"latent_dim": 3, "hidden": (32,)}, "mean_field", {}),
    "m2": ({"latent_dim": 3, "hidden": (32,)}, "m2", {}),
    "vae-conv-logistic": (
        {"latent_dim": 3, "decoder": "conv", "channels": 8, "likelihood": "discretized_logistic", "num_levels": 17},
        "mean_field",
        {"binarize": False},
    ),
    "vae-continuous-bernoulli": ({"latent_dim": 3, "likelihood": "continuous_bernoulli"}, "mean_field", {"binarize": False}),
}


@pytest.mark.parametrize("key", sorted(FAMILY))
def test_model_trains_samples_encodes_and_scores(key):
    options, guide_name, data_options = FAMILY[key]
    data = pg.load_dataset("digits", **data_options)
    pyro.set_rng_seed(0)
    model = pg.create_model(key.split("-")[0], data, **options)
    guide = pg.create_guide(guide_name, model)
    objective = "traceenum_elbo" if key == "m2" else "trace_elbo"  # m2 enumerates its label
    result = pg.fit(model, guide, data, epochs=2, batch_size=256, objective=objective, progress=False)
    assert math.isfinite(result.history[-1]["val_elbo"])
    x = sample(model, 5, mean=True, seed=1)
    assert x.shape == (5, 1, 8, 8) and torch.isfinite(x).all()
    codes = encode(guide, data.test[:7])
    assert codes.shape[0] == 7 and torch.isfinite(codes).all()
    if key == "ae":
        with pytest.raises(ConfigError, match="improper prior"):
            pg.log_likelihood(model, pg.create_guide("mean_field", model), data.test[:4], 10)
    else:
        ll = pg.log_likelihood(model, guide, data.test[:10], 20, seed=0)
        assert torch.isfinite(ll.per_point).all()
        # The IS estimate is a log-mean-exp of the same weights whose mean is the ELBO.
        assert (ll.per_point >= ll.elbo - 1e-4).all()


def test_discretized_logistic_is_normalized_and_rejects_off_grid_values():
    torch.manual_seed(0)
    d = DiscretizedLogisticDistribution(torch.randn(50) * 2, torch.rand(50) + 1e-3, num_levels=17)
    grid = torch.linspace(0, 1, 17).reshape(-1, 1)
    assert torch.allclose(d.log_prob(grid).exp().sum(0), torch.ones(50), atol=1e-5)
    assert torch.allclose(d.mean, (d.log_prob(grid).exp() * grid).sum(0))
    draws = d.sample((200,))
    assert torch.allclose(draws * 16, (draws * 16).round())
    model = pg.create_model("vae", (1, 8, 8), likelihood="discretized_logistic", num_levels=17)
    with pytest.raises(DataError, match="num_levels"):
        model.validate_data(torch.full((2, 1, 8, 8), 0.3))
    model.validate_data(torch.full((2, 1, 8, 8), 5 / 16))


def test_continuous_bernoulli_density_integrates_to_one():
    likelihood = create_likelihood("continuous_bernoulli", (3,))
    logits = torch.tensor([-4.0, 0.0, 2.5])  # includes 0, where torch switches to a Taylor expansion
    grid = torch.linspace(0, 1, 20001).unsqueeze(-1).expand(-1, 3)
    density = likelihood(logits).base_dist.log_prob(grid).exp()
    area = torch.trapezoid(density, dx=1 / 20000, dim=0)
    assert torch.allclose(area, torch.ones(3), atol=1e-4)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        pg.create_model("vae", (3,), likelihood="continuous_bernoulli").validate_data(torch.tensor([[0.2, 1.5, 0.0]]))


def test_likelihood_options_are_checked():
    with pytest.raises(ConfigError, match="scale does not apply"):
        pg.create_model("vae", (1, 8, 8), likelihood="bernoulli", scale=0.5)
    with pytest.raises(ConfigError, match="conv decoder needs image data"):
        pg.create_model("vae", (5,), decoder="conv")


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 5, 7)])
def test_conv_decoder_output_layout(shape):
    decoder = ConvDecoder(4, shape, params_per_dim=2, channels=4)
    out = decoder(torch.randn(6, 3, 4))
    assert out.shape == (6, 3, 2 * math.prod(shape))


def test_ae_objective_is_reconstruction_only(digits):
    pyro.set_rng_seed(0)
    model = pg.create_model("ae", digits, latent_dim=3)
    guide = pg.create_guide("delta", model)
    x = digits.test[:16]
    with torch.no_grad():
        elbo = log_importance_weights(model, guide, x, 1)[0]
        code = guide.variational_parameters(x)
        reconstruction = model.observation(model.decoder(code)).log_prob(x)
    assert torch.allclose(elbo, reconstruction, atol=1e-5)  # no log p(z) term at all


def test_ae_reference_codes_follow_fitted_distribution():
    model = pg.create_model("ae", (1, 8, 8), latent_dim=2)
    codes = torch.tensor([[1.0, -3.0], [3.0, -1.0], [2.0, -2.0]])
    model.fit_code_distribution(codes)
    trace = poutine.trace(model).get_trace(num_samples=20000)
    z = trace.nodes["z"]["value"]
    # mean of 20000 draws with std 1: standard error 0.007, so 0.05 is > 7 standard errors.
    assert torch.allclose(z.mean(0), torch.tensor([2.0, -2.0]), atol=0.05)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 1.0]), atol=0.05)
    assert float(trace.nodes["z"]["fn"].log_prob(z).abs().sum()) == 0.0  # flat density


@pytest.mark.parametrize("name, options", [
    ("vamp", {"latent_dim": 2, "num_pseudo": 7, "encoder_hidden": (16,)}),
    ("flow_prior", {"latent_dim": 2, "flow": "maf", "num_flows": 2}),
    ("flow_prior", {"latent_dim": 2, "flow": "spline_coupling", "num_flows": 2}),
])
def test_learned_priors_are_normalized(name, options):
    """E_r[p(z) / r(z)] = 1 for a wide proposal r = N(0, 4^2 I), checked by Monte Carlo."""
    pyro.set_rng_seed(0)
    model = pg.create_model(name, (1, 8, 8), **options)
    with torch.no_grad():
        prior = poutine.trace(model.prior).get_trace().nodes["z"]["fn"]
        proposal = dist.Normal(torch.zeros(2), 4.0).to_event(1)
        z = proposal.sample((200000,))
        ratio = (prior.log_prob(z) - proposal.log_prob(z)).exp()
    stderr = float(ratio.std() / math.sqrt(ratio.numel()))
    assert abs(float(ratio.mean()) - 1) < 5 * stderr + 1e-3  # 5 standard errors


def test_vamp_prior_is_mixture_of_pseudo_input_posteriors():
    pyro.set_rng_seed(0)
    model = pg.create_model("vamp", (1, 8, 8), latent_dim=3, num_pseudo=5, encoder_hidden=(8,))
    loc, scale = model.components()
    reference = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(5)), dist.Normal(loc, scale).to_event(1))
    z = torch.randn(11, 3)
    fn = poutine.trace(model.prior).get_trace().nodes["z"]["fn"]
    assert torch.allclose(fn.log_prob(z), reference.log_prob(z), atol=1e-5)
    assert loc.shape == (5, 3) and model.pseudo_inputs.requires_grad


def test_vae2_samples_top_layer_first_and_declares_bottom_up():
    model = pg.create_model("vae2", (1, 8, 8), latent_dims=(6, 3), hidden=(16, 8))
    assert [s.name for s in model.latent_sites] == ["z1", "z2"]
    trace = poutine.trace(model).get_trace(num_samples=4)
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample" and n in ("z1", "z2")]
    assert names == ["z2", "z1"]
    assert trace.nodes["z1"]["value"].shape == (4, 6) and trace.nodes["z2"]["value"].shape == (4, 3)
    # z1's prior depends on z2: its mean is the top network of z2.
    loc = model.top(trace.nodes["z2"]["value"]).chunk(2, dim=-1)[0]
    assert torch.allclose(trace.nodes["z1"]["fn"].base_dist.loc, loc)


def test_cvae_conditions_on_labels_and_marginalizes_without_them():
    pyro.set_rng_seed(0)
    model = pg.create_model("cvae", (1, 8, 8), latent_dim=2, num_classes=3)
    z = torch.randn(4, 2)
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.3))
    per_label = torch.stack(
        [model.likelihood({"z": z}, torch.full((4,), k)).log_prob(x) for k in range(3)], dim=-1
    )
    marginal = model.likelihood({"z": z}).log_prob(x)
    assert torch.allclose(marginal, torch.logsumexp(per_label, -1) - math.log(3), atol=1e-5)
    a = sample(model, 4, mean=True, seed=0, y=torch.zeros(4, dtype=torch.long))
    b = sample(model, 4, mean=True, seed=0, y=torch.full((4,), 2))
    assert not torch.allclose(a, b)  # same z, different label, different image


def test_cvae_needs_complete_labels(digits):
    model = pg.create_model("cvae", digits, latent_dim=2)
    guide = pg.create_guide("mean_field", model)
    missing = torch.full_like(digits.train_labels, -1)
    with pytest.raises(DataError, match="needs every label"):
        pg.fit(model, guide, pg.Dataset("d", digits.train, digits.val, digits.test, "dynamic", missing), epochs=1)
    with pytest.raises(DataError, match="has none"):
        pg.fit(model, guide, pg.Dataset("d", digits.train, digits.val, digits.test, "dynamic"), epochs=1)

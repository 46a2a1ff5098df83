"""Ladder VAE (models/ladder_vae.py, guides/ladder.py): the precision-weighted merge, the guide's
use of the model's top-down networks, training on digits, IS >= ELBO, pairing and bad options."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro_genmod.guides.ladder import precision_weighted

import pyro_genmod as pg

SMALL = {"latent_dims": (6, 4, 2), "hidden": (32, 16, 8)}


@pytest.fixture(scope="module")
def tiny(digits) -> pg.Dataset:
    return pg.Dataset(name="digits", train=digits.train[:128], val=digits.val[:16], test=digits.test[:32],
                      binarization=digits.binarization, options=dict(digits.options))


def test_precision_weighted_is_the_normalized_product():
    torch.manual_seed(0)
    loc_a, loc_b = torch.randn(5), torch.randn(5)
    scale_a, scale_b = torch.rand(5) + 0.2, torch.rand(5) + 0.2
    loc, scale = precision_weighted(loc_a, scale_a, loc_b, scale_b)
    z = torch.linspace(-3, 3, 7).unsqueeze(-1)
    # log N(z; a) + log N(z; b) - log N(z; merged) does not depend on z
    diff = dist.Normal(loc_a, scale_a).log_prob(z) + dist.Normal(loc_b, scale_b).log_prob(z) - dist.Normal(
        loc, scale).log_prob(z)
    torch.testing.assert_close(diff, diff[:1].expand_as(diff))
    assert bool((scale < torch.minimum(scale_a, scale_b)).all())


def test_guide_merges_with_the_models_top_down_conditionals(tiny):
    torch.manual_seed(0)
    model = pg.create_model("ladder_vae", tiny, **SMALL)
    guide = pg.create_guide("ladder", model)
    assert not any(p is q for p in guide.parameters() for q in model.top_down.parameters())  # shared, not owned
    trace = poutine.trace(guide).get_trace(tiny.test[:4])
    assert [n for n in trace.nodes if n.startswith("z")] == ["z3", "z2", "z1"]  # top-down order
    # z2's q is the merge of the bottom-up estimate with p(z2 | z3) at the drawn z3
    d = tiny.test[:4].reshape(4, -1)
    for network in guide.bottom_up[:2]:
        d = network(d)
    loc_hat, raw = guide.heads[1](d).chunk(2, dim=-1)
    loc_p, scale_p = model.conditional_prior(1, trace.nodes["z3"]["value"])
    loc, scale = precision_weighted(loc_hat, torch.nn.functional.softplus(raw) + 1e-4, loc_p, scale_p)
    q = trace.nodes["z2"]["fn"]
    torch.testing.assert_close(q.base_dist.loc, loc)
    torch.testing.assert_close(q.base_dist.scale, scale)
    # the top-down networks get gradients through the guide too
    model.zero_grad()
    trace.log_prob_sum().backward()
    assert model.top_down[1][0].weight.grad is not None


def test_trains_on_digits_and_is_is_at_least_the_elbo(tiny):
    torch.manual_seed(0)
    model = pg.create_model("ladder_vae", tiny, **SMALL)
    guide = pg.create_guide("ladder", model)
    assert pg.create_model("ladder_vae", tiny).default_guide == "ladder"
    result = pg.fit(model, guide, tiny, epochs=3, batch_size=32, progress=False, seed=0, kl_warmup=1)
    assert all(math.isfinite(h["val_elbo"]) for h in result.history)
    ll = pg.log_likelihood(model, guide, tiny.test, num_samples=200, seed=0)
    assert ll.per_point.shape == (32,) and torch.isfinite(ll.per_point).all()
    # on the same K draws log-mean-exp >= mean (Jensen), point by point; and the gap, averaged over
    # the points, is positive beyond its standard error (q is not the exact posterior)
    assert bool((ll.per_point >= ll.elbo - 1e-4).all())
    gap = ll.per_point - ll.elbo
    assert float(gap.mean()) > 4 * float(gap.std() / math.sqrt(gap.numel()))
    assert pg.sample(model, 3).shape == (3, *tiny.shape)


@pytest.mark.parametrize("guide_name", ["top_down", "bottom_up", "mean_field"])
def test_other_hierarchical_guides_fit(guide_name, tiny):
    torch.manual_seed(0)
    model = pg.create_model("ladder_vae", tiny, **SMALL)
    guide = pg.create_guide(guide_name, model, hidden=(16,))
    result = pg.fit(model, guide, tiny, epochs=1, batch_size=64, progress=False)
    assert math.isfinite(result.history[-1]["val_elbo"])


@pytest.mark.parametrize(("options", "match"), [
    ({"latent_dims": (8, 4)}, "three or more"),
    ({"latent_dims": (8, 4, 0)}, "three or more"),
    ({"hidden": (64, 32)}, "3 positive widths"),
    ({"latent_dim": 8}, "no option 'latent_dim'"),
])
def test_bad_model_options_are_one_line_config_errors(options, match):
    with pytest.raises(pg.ConfigError, match=match) as info:
        pg.create_model("ladder_vae", (1, 8, 8), **options)
    assert "\n" not in str(info.value)


def test_ladder_guide_refuses_other_models_and_bad_widths(tiny):
    with pytest.raises(pg.PairingError, match="conditional_prior"):
        pg.create_guide("ladder", pg.create_model("vae2", tiny))
    model = pg.create_model("ladder_vae", tiny, **SMALL)
    with pytest.raises(pg.ConfigError, match="3 positive widths") as info:
        pg.create_guide("ladder", model, hidden=(16, 8))
    assert "\n" not in str(info.value)

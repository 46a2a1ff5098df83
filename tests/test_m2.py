"""M2: the label is enumerated when unknown, observed when known, and a trained M2 classifies."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import pyro_genmod as pg
from pyro_genmod.errors import ConfigError, DataError, PairingError
from pyro_genmod.labels import with_labels
from pyro_genmod.nn import join_label
from pyro_genmod.models.m2 import hide_labels


@pytest.fixture(scope="module")
def small(digits):
    pyro.set_rng_seed(0)
    model = pg.create_model("m2", digits, latent_dim=3, hidden=(16,), alpha=0.0)
    return model, pg.create_guide("m2", model), digits.test[:12]


def test_unlabelled_bound_sums_over_every_label(small):
    """TraceEnum_ELBO equals sum_y q(y|x) [log p(x, y, z_y) - log q(z_y|x, y) - log q(y|x)]."""
    model, guide, x = small
    pyro.set_rng_seed(1)
    loss = float(TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x).detach())
    pyro.set_rng_seed(1)  # the same z draws: the guide is the only source of randomness
    guide_trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    y = guide_trace.nodes["y"]["value"]
    assert y.shape == (10, 1) and torch.equal(y.squeeze(), torch.arange(10))  # all labels, in parallel
    log_q_y = guide_trace.nodes["y"]["fn"].log_prob(y)  # (10, N)
    log_p = sum(model_trace.nodes[n]["fn"].log_prob(model_trace.nodes[n]["value"]) for n in ("y", "z", "x"))
    log_q_z = guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
    assert log_q_z.shape == (10, x.shape[0])  # one z per label and point
    elbo = (log_q_y.exp() * (log_p - log_q_z - log_q_y)).sum()
    assert loss == pytest.approx(-float(elbo.detach()), rel=1e-4)


def test_known_labels_are_observed_and_condition_the_encoder(digits):
    pyro.set_rng_seed(0)
    model = pg.create_model("m2", digits, latent_dim=3, hidden=(16,), alpha=2.0)
    guide = pg.create_guide("m2", model)
    x = digits.test[:6]
    y = torch.tensor([3, -1, 7, -1, 0, 9])
    guide_trace = poutine.trace(with_labels(guide, y)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(with_labels(model, y), trace=guide_trace)).get_trace(x)
    known = y >= 0
    assert torch.equal(model_trace.nodes["y_label"]["mask"], known)
    assert torch.equal(model_trace.nodes["y"]["mask"], ~known) and torch.equal(guide_trace.nodes["y"]["mask"], ~known)
    assert torch.equal(model_trace.nodes["y_label"]["value"][known], y[known])
    # the classification term alpha * log q(y|x) on labelled rows
    site = model_trace.nodes["classify"]
    factor = site["fn"].log_prob(site["value"])
    expected = 2.0 * model.classify(x).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(factor[known], expected[known])
    # q(z | x, y) gets the known label on labelled rows, the sampled one elsewhere
    sampled = guide_trace.nodes["y"]["value"]
    used = torch.where(known, y, sampled)
    loc = guide.encoder(join_label(x.reshape(6, -1), used, 10)).chunk(2, -1)[0]
    assert torch.allclose(guide_trace.nodes["z"]["fn"].base_dist.loc, loc)


def test_m2_guide_fits_only_m2_and_labels_are_checked(digits):
    vae = pg.create_model("vae", digits, latent_dim=2)
    with pytest.raises(PairingError, match="fits no other model"):
        pg.create_guide("m2", vae)
    model = pg.create_model("m2", digits, latent_dim=2, hidden=(8,))
    with pytest.raises(PairingError):
        pg.create_guide("mean_field", model)  # y is discrete
    with pytest.raises(DataError, match=r"\[-1, 9\]"):
        model.validate_labels(torch.tensor([0, 10]), 2)
    with pytest.raises(ConfigError, match="multiple"):
        hide_labels(digits, 15)


def test_hide_labels_keeps_a_balanced_subset(digits):
    data = hide_labels(digits, 30, seed=0)
    kept = data.train_labels[data.train_labels >= 0]
    assert kept.numel() == 30 and torch.equal(torch.bincount(kept), torch.full((10,), 3))
    assert torch.equal(data.train_labels[data.train_labels >= 0], digits.train_labels[data.train_labels >= 0])
    assert torch.equal(data.test_labels, digits.test_labels)


def test_trained_m2_beats_chance_with_few_labels(digits):
    data = hide_labels(digits, 50, seed=0)  # 5 per class, 3.9% of the 1,297 training images
    pyro.set_rng_seed(0)
    model = pg.create_model("m2", data, latent_dim=8, hidden=(128,))
    guide = pg.create_guide("m2", model)
    pg.fit(model, guide, data, epochs=20, batch_size=128, lr=3e-3, objective="traceenum_elbo", progress=False)
    accuracy = model.accuracy(data.test, data.test_labels)
    # chance is 0.1; on 300 test points its standard error is sqrt(0.1 * 0.9 / 300) = 0.017, so
    # 0.5 is more than 20 standard errors above chance.
    print(f"M2 test accuracy with 50 labels: {accuracy:.3f}")
    assert accuracy > 0.5, accuracy

"""Every registered (model, guide) pair: a pair that fits trains 3 steps and is scored; one that
does not fit raises PairingError. New models and guides join automatically."""

from __future__ import annotations

import math

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.factories import pairing_problem
from pyro_genmod.experiment import score

PAIRS = [(model, guide) for model in pg.list_models() for guide in pg.list_guides()]


@pytest.fixture(scope="module")
def tiny(digits) -> pg.Dataset:
    """48 training points (3 steps of 16), 8 validation and 8 test points of 8x8 digits."""
    return pg.Dataset(
        name="digits",
        train=digits.train[:48],
        val=digits.val[:8],
        test=digits.test[:8],
        binarization=digits.binarization,
        train_labels=None if digits.train_labels is None else digits.train_labels[:48],
        val_labels=None if digits.val_labels is None else digits.val_labels[:8],
        test_labels=None if digits.test_labels is None else digits.test_labels[:8],
        options=dict(digits.options),
    )


@pytest.mark.parametrize(("model_name", "guide_name"), PAIRS, ids=[f"{m}+{g}" for m, g in PAIRS])
def test_pair_trains_and_scores_or_refuses(model_name, guide_name, tiny):
    torch.manual_seed(0)
    model = pg.create_model(model_name, tiny)
    reason = pairing_problem(guide_name, model)
    if reason is not None:
        with pytest.raises(pg.PairingError, match=guide_name):
            pg.create_guide(guide_name, model)
        return
    guide = pg.create_guide(guide_name, model)
    discrete = any(site.discrete for site in model.latent_sites)
    objective = "traceenum_elbo" if discrete else "trace_elbo"
    result = pg.fit(model, guide, tiny, epochs=1, batch_size=16, objective=objective, progress=False)
    assert result.epochs_run == 1 and math.isfinite(result.history[-1]["val_elbo"])
    if not getattr(model, "has_log_likelihood", True):
        # an improper prior (the plain autoencoder): log p(x) is undefined, so the estimator
        # refuses it and score() reports NaN with the reconstruction ELBO
        with pytest.raises(pg.ConfigError, match="improper prior"):
            pg.log_likelihood(model, guide, tiny.test, 4)
        ll, proposal = score(model, guide, tiny.test, num_samples=4, seed=0)
        assert proposal == "none" and torch.isnan(ll.per_point).all() and torch.isfinite(ll.elbo).all()
        return
    ll, proposal = score(model, guide, tiny.test, num_samples=4, seed=0)
    assert ll.per_point.shape == (tiny.test.shape[0],)
    assert torch.isfinite(ll.per_point).all(), f"{model_name}+{guide_name} (proposal {proposal})"
    # the IS estimate with K draws is at least their mean log weight, the ELBO estimate
    assert bool((ll.per_point >= ll.elbo - 1e-4).all())

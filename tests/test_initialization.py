"""fit(init=...): Glorot-uniform weights and Burda et al.'s data-dependent output bias."""

from __future__ import annotations

import math

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.initialization import initialize


def _pair(digits, **model_options):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=4, hidden=[64, 32], **model_options)
    return model, pg.create_guide("mean_field", model, hidden=[64, 32])


def _linears(*modules):
    return [m for module in modules for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_glorot_draws_every_weight_uniformly_in_its_bound_with_zero_biases(digits):
    model, guide = _pair(digits)
    initialize(model, guide, digits.train, "glorot", seed=3)
    layers = _linears(model, guide)
    assert len(layers) == 6
    for layer in layers:
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        w = layer.weight.detach().flatten()
        assert float(w.abs().max()) <= bound and torch.all(layer.bias == 0)
        # U(-a, a) has variance a^2/3; the sample variance of n draws has relative s.e. about sqrt(0.8/n)
        n, var = w.numel(), float(w.var())
        assert abs(var / (bound**2 / 3) - 1) < 5 * math.sqrt(0.8 / n), (layer, var, bound**2 / 3)


def test_burda_sets_the_output_bias_to_the_logits_of_the_mean_pixel(digits):
    model, guide = _pair(digits)
    initialize(model, guide, digits.train, "burda", seed=0)
    mean = digits.train.reshape(len(digits.train), -1).mean(0).clamp(0.001, 0.999)
    assert torch.allclose(model.decoder[-1].bias, torch.logit(mean), atol=1e-5)
    # every other bias is zero, and the untrained decoder's average prediction is near the mean image
    assert all(torch.all(layer.bias == 0) for layer in _linears(model, guide) if layer is not model.decoder[-1])


def test_init_is_seeded_and_leaves_the_global_streams_alone(digits):
    first, second = _pair(digits), _pair(digits)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    initialize(*first, digits.train, "burda", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    initialize(*second, digits.train, "burda", seed=4)
    for a, b in zip(first[0].state_dict().values(), second[0].state_dict().values()):
        assert torch.equal(a, b)
    other = _pair(digits)
    initialize(*other, digits.train, "burda", seed=5)
    assert not torch.equal(other[0].decoder[0].weight, first[0].decoder[0].weight)


def test_fit_applies_and_records_the_init(digits):
    model, guide = _pair(digits)
    result = pg.fit(model, guide, digits, epochs=1, batch_size=512, progress=False, init="burda", seed=2)
    assert result.options["init"] == "burda"
    fresh, fresh_guide = _pair(digits)
    initialize(fresh, fresh_guide, digits.train, "burda", seed=2)
    again = pg.fit(fresh, fresh_guide, digits, epochs=1, batch_size=512, progress=False, seed=2)
    # fit(init=) is the same as initializing first with fit's seed, then fitting without it
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert result.history[0]["train_elbo"] == again.history[0]["train_elbo"]
    assert "init" not in pg.fit(*_pair(digits), digits, epochs=1, batch_size=512, progress=False).options


def test_bad_inits_are_refused_before_anything_changes(digits):
    model, guide = _pair(digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pg.ConfigError, match="unknown init 'xavier'"):
        pg.fit(model, guide, digits, epochs=1, progress=False, init="xavier")
    gaussian, g_guide = _pair(digits, likelihood="gaussian")
    with pytest.raises(pg.ConfigError, match="Bernoulli likelihood"):
        initialize(gaussian, g_guide, digits.train, "burda")
    conv = pg.create_model("vae", digits, latent_dim=4, decoder="conv", channels=4)
    with pytest.raises(pg.ConfigError, match="last layer is linear"):
        initialize(conv, pg.create_guide("mean_field", conv, hidden=[8]), digits.train, "burda")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # glorot fits any pair, the conv decoder's linear layers included
    initialize(conv, pg.create_guide("mean_field", conv, hidden=[8]), digits.train, "glorot")


def test_resume_refuses_a_changed_init(digits, tmp_path):
    model, guide = _pair(digits)
    pg.fit(model, guide, digits, epochs=1, batch_size=512, checkpoint=tmp_path, progress=False, init="glorot")
    with pytest.raises(pg.ConfigError, match="init"):
        pg.fit(*_pair(digits), digits, epochs=2, batch_size=512, checkpoint=tmp_path, resume=True, progress=False)

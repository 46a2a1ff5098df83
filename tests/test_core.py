"""The core contract: registry, pairing, data, training, sampling and encoding."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyro_genmod as pg
from pyro_genmod.models.base import GenerativeModel
from pyro_genmod import train as train_module
from pyro_genmod.latents import LatentSite, check_pair


class DiscreteLatentModel(GenerativeModel):
    """A tiny mixture with a discrete latent, to provoke pairing errors."""

    registry_name = "discrete_test"

    def __init__(self, data_shape):
        super().__init__(data_shape)
        self.latent_sites = (LatentSite("y", (), constraints.integer_interval(0, 2), discrete=True),)
        self.means = torch.nn.Parameter(torch.zeros(3, *data_shape))

    def prior(self):
        return {"y": pyro.sample("y", dist.Categorical(torch.ones(3) / 3))}

    def likelihood(self, latents):
        return dist.Normal(self.means[latents["y"]], 1.0).to_event(len(self.data_shape))


def test_registry_lists_core_entries():
    assert "vae" in pg.list_models()
    assert {"mean_field", "full_rank", "delta", "prior"} <= set(pg.list_guides())
    assert "digits" in pg.list_datasets()


def test_unknown_names_raise_with_choices(digits):
    with pytest.raises(pg.UnknownNameError, match="unknown model 'nope'.*vae"):
        pg.create_model("nope", digits)
    model = pg.create_model("vae", digits)
    with pytest.raises(pg.UnknownNameError, match="unknown guide 'nope'"):
        pg.create_guide("nope", model)
    with pytest.raises(pg.UnknownNameError, match="unknown dataset"):
        pg.load_dataset("nope")
    with pytest.raises(pg.ConfigError, match="no option 'latent_dims'"):
        pg.create_model("vae", digits, latent_dims=3)


def test_discrete_site_refused_by_continuous_guide_before_training():
    model = DiscreteLatentModel((4,))
    with pytest.raises(pg.PairingError, match="'y' discrete.*continuous"):
        pg.create_guide("mean_field", model)


def test_pairing_error_names_site_and_shape(digits):
    guide = pg.create_guide("mean_field", pg.create_model("vae", digits, latent_dim=4))
    other = pg.create_model("vae", digits, latent_dim=3)
    with pytest.raises(pg.PairingError, match=r"latent site 'z'.*shape \(3,\).*shape \(4,\)"):
        check_pair(other, guide)
    with pytest.raises(pg.PairingError):
        pg.fit(other, guide, digits, epochs=1, progress=False)


def test_pairing_error_names_support_and_missing_sites(digits):
    model = pg.create_model("vae", digits, latent_dim=2)
    guide = pg.create_guide("mean_field", model)
    guide.latent_sites = (LatentSite("z", (2,), constraints.positive),)
    with pytest.raises(pg.PairingError, match="support real.*support positive"):
        check_pair(model, guide)
    guide.latent_sites = (LatentSite("w", (2,)),)
    with pytest.raises(pg.PairingError, match="does not sample latent site 'z'"):
        check_pair(model, guide)
    guide.latent_sites = (LatentSite("z", (2,)), LatentSite("w", (2,)))
    with pytest.raises(pg.PairingError, match=r"\['w'\]"):
        check_pair(model, guide)


def test_guides_cover_constrained_supports_through_biject_to():
    class PositiveLatent(GenerativeModel):
        registry_name = "positive_test"

        def __init__(self, data_shape):
            super().__init__(data_shape)
            self.latent_sites = (LatentSite("rate", (3,), constraints.positive),)

        def prior(self):
            return {"rate": pyro.sample("rate", dist.Gamma(2.0, 1.0).expand([3]).to_event(1))}

        def likelihood(self, latents):
            return dist.Poisson(latents["rate"]).to_event(1)

    model = PositiveLatent((3,))
    x = torch.poisson(torch.full((20, 3), 2.0))
    for name in ("mean_field", "full_rank"):
        guide = pg.create_guide(name, model)
        z = pg.encode(guide, x, num_samples=7)
        assert z.shape == (7, 20, 3) and bool((z > 0).all())
        ll = pg.log_likelihood(model, guide, x, 50, khat=False)
        assert torch.isfinite(ll.per_point).all()


def test_digits_splits_and_binarization(digits):
    assert digits.shape == (1, 8, 8)
    assert (digits.train.shape[0], digits.val.shape[0], digits.test.shape[0]) == (1297, 200, 300)
    assert float(digits.train.min()) >= 0 and float(digits.train.max()) <= 1
    assert set(digits.test.unique().tolist()) == {0.0, 1.0}
    again = pg.load_dataset("digits")
    assert torch.equal(again.test, digits.test), "the test set is binarized once with a fixed seed"
    g = torch.Generator().manual_seed(0)
    first, second = digits.training_batch(digits.train[:50], g), digits.training_batch(digits.train[:50], g)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second), "training pixels are redrawn every time"
    raw = pg.load_dataset("digits", binarize=False)
    assert raw.binarization == "none" and len(raw.test.unique()) > 2


def test_bernoulli_model_rejects_non_binary_data(digits):
    raw = pg.load_dataset("digits", binarize=False)
    model = pg.create_model("vae", raw, likelihood="bernoulli")  # without it, grey levels get a Gaussian
    guide = pg.create_guide("mean_field", model)
    with pytest.raises(pg.DataError, match=r"Bernoulli likelihood needs values in \{0, 1\}"):
        pg.fit(model, guide, raw, epochs=1, progress=False)
    gaussian = pg.create_model("vae", raw, likelihood="gaussian")
    result = pg.fit(gaussian, pg.create_guide("mean_field", gaussian), raw, epochs=2, progress=False)
    assert result.epochs_run == 2


def test_fit_improves_elbo_and_records_history(digits):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=4)
    guide = pg.create_guide("mean_field", model)
    before = train_module.evaluate_elbo(model, guide, digits.val)
    result = pg.fit(model, guide, digits, epochs=5, seed=0, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert result.history[-1]["val_elbo"] > before + 5  # untrained ~-45 nats; 5 epochs gain >10
    assert result.train_seconds > 0


def test_fit_is_reproducible_with_a_seed(digits):
    def run():
        pyro.set_rng_seed(1)
        model = pg.create_model("vae", digits, latent_dim=3)
        guide = pg.create_guide("full_rank", model)
        pg.fit(model, guide, digits, epochs=2, seed=5, progress=False)
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": -3}, {"lr": 0.0}, {"lr": float("nan")}, {"num_particles": 0}])
def test_fit_rejects_bad_options(digits, bad):
    model = pg.create_model("vae", digits, latent_dim=2)
    with pytest.raises(pg.ConfigError):
        pg.fit(model, pg.create_guide("mean_field", model), digits, progress=False, **bad)


def test_unknown_objective_is_refused(digits):
    model = pg.create_model("vae", digits, latent_dim=2)
    with pytest.raises(pg.UnknownNameError, match="unknown objective 'elbo'"):
        pg.fit(model, pg.create_guide("mean_field", model), digits, objective="elbo", progress=False)


def test_delta_guide_trains_as_regularized_autoencoder(digits):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=4)
    guide = pg.create_guide("delta", model)
    result = pg.fit(model, guide, digits, epochs=8, seed=0, progress=False)
    assert result.history[-1]["train_elbo"] > result.history[0]["train_elbo"] + 3
    z = pg.encode(guide, digits.test[:10])
    draws = pg.encode(guide, digits.test[:10], num_samples=3)
    assert torch.allclose(draws, z.expand(3, 10, 4)), "a point estimate has no spread"
    with pytest.raises(pg.ConfigError, match="point estimate.*'prior'"):
        pg.log_likelihood(model, guide, digits.test[:10], 10)


def test_non_finite_loss_stops_and_keeps_last_good_state(digits, monkeypatch):
    from pyro_genmod.objectives import get_objective as real_get_objective

    calls = {"n": 0}

    def poisoned(name, num_particles=1):
        objective = real_get_objective(name, num_particles)

        def loss(model, guide, x):
            calls["n"] += 1
            value, number = objective(model, guide, x)
            return (value * float("nan"), float("nan")) if calls["n"] == 25 else (value, number)

        return loss

    monkeypatch.setattr(train_module, "get_objective", poisoned)
    model = pg.create_model("vae", digits, latent_dim=2)
    guide = pg.create_guide("mean_field", model)
    # 1297 points / batch 128 = 11 steps per epoch, so call 25 is in epoch 3.
    with pytest.raises(pg.TrainingDiverged, match="epoch 3, step 3.*end of epoch 2") as info:
        pg.fit(model, guide, digits, epochs=5, progress=False)
    assert info.value.result.epochs_run == 2
    assert all(torch.isfinite(p).all() for p in list(model.parameters()) + list(guide.parameters()))


def test_early_stopping_restores_best_epoch(digits):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=2)
    guide = pg.create_guide("mean_field", model)
    result = pg.fit(model, guide, digits, epochs=60, lr=3e-2, early_stopping=2, seed=0, progress=False)
    assert result.epochs_run < 60
    assert result.stopped_reason.startswith("early stopping")
    assert result.best_epoch == result.epochs_run - 2
    best = max(r["val_elbo"] for r in result.history)
    assert result.history[result.best_epoch - 1]["val_elbo"] == best


def test_sample_and_encode_shapes(trained_vae):
    model, guide = trained_vae
    x = pg.sample(model, 16, seed=0)
    assert x.shape == (16, 1, 8, 8) and set(x.unique().tolist()) <= {0.0, 1.0}
    mean = pg.sample(model, 16, mean=True, seed=0)
    assert float(mean.min()) >= 0 and float(mean.max()) <= 1 and len(mean.unique()) > 2
    assert torch.equal(pg.sample(model, 4, seed=3), pg.sample(model, 4, seed=3))
    data = pg.load_dataset("digits").test[:12]
    z = pg.encode(guide, data)
    assert z.shape == (12, 4)
    draws = pg.encode(guide, data, num_samples=4000)
    # The posterior mean against the mean of 4000 draws: within 5 standard errors per coordinate.
    stderr = draws.std(0) / 4000**0.5
    assert bool(((draws.mean(0) - z).abs() < 5 * stderr).all())


def test_encode_gives_class_probabilities_for_discrete_sites():
    model = DiscreteLatentModel((4,))
    x = torch.randn(6, 4)
    guide = pg.create_guide("prior", model)
    probs = pg.encode(guide, x, mc_samples=2000)
    assert probs.shape == (6, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(6))
    # one-hot Monte Carlo mean of a uniform prior: each share within 5 binomial SEs of 1/3
    assert bool(((probs - 1 / 3).abs() < 5 * (2 / 9 / 2000) ** 0.5).all())
    assert pg.encode(guide, x, num_samples=5).shape == (5, 6, 1)

"""Ex-post samplers (gmm, maf, two_stage) and the Fréchet-distance sample-quality measure (issue 22)."""

from __future__ import annotations

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.errors import ConfigError, DataError, UnknownNameError
from pyro_genmod.sample_quality import frechet_distance, sample_fd, train_classifier

FAST = {"gmm": {}, "maf": {"epochs": 20, "lr": 3e-3}, "two_stage": {"epochs": 10}}


@pytest.fixture(scope="module")
def codes(digits, trained_vae):
    _, guide = trained_vae
    with pg.seeding.seeded(0):
        return pg.encode(guide, digits.training_batch(digits.train))


@pytest.fixture(scope="module")
def fitted(digits, trained_vae):
    model, guide = trained_vae
    return {kind: pg.fit_sampler(kind, model, guide, digits, seed=0, **opts) for kind, opts in FAST.items()}


@pytest.mark.parametrize("kind", sorted(FAST))
def test_each_sampler_fits_and_draws_points_of_the_data_shape(kind, fitted, trained_vae, digits):
    model, _ = trained_vae
    sampler = fitted[kind]
    assert sampler.dim == 4 and sampler.site_shapes == {"z": (4,)}
    assert sampler.sample(5).shape == (5, 4)
    x = pg.sample(model, 6, sampler=sampler, mean=True, seed=3)
    assert x.shape == (6, *digits.shape) and bool(((x >= 0) & (x <= 1)).all())
    assert torch.equal(x, pg.sample(model, 6, sampler=sampler, mean=True, seed=3)), "seeded draws repeat"
    draws = pg.sample(model, 6, sampler=sampler, seed=3)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}, "mean=False draws Bernoulli pixels"


def test_sampler_by_name_with_guide_and_data(trained_vae, digits):
    model, guide = trained_vae
    x = pg.sample(model, 4, sampler="gmm", guide=guide, data=digits, seed=0)
    assert x.shape == (4, *digits.shape)


def test_the_default_prior_sampler_is_unchanged(trained_vae):
    model, _ = trained_vae
    assert torch.equal(pg.sample(model, 8, seed=5), pg.sample(model, 8, seed=5, sampler="prior"))
    # the prior path draws z ~ N(0, I) and decodes it: decode() of the same z gives the same means
    with pg.seeding.seeded(5):
        z = torch.randn(8, 4)
    assert torch.allclose(pg.sample(model, 8, mean=True, seed=5), pg.decode(model, z), atol=1e-6)


def _stderr_of_moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and covariance of draws (N, D), each with its Monte Carlo standard error."""
    n = draws.shape[0]
    mean = draws.mean(0)
    centred = draws - mean
    products = centred.unsqueeze(2) * centred.unsqueeze(1)  # (N, D, D)
    return mean, draws.std(0) / n**0.5, products.mean(0), products.std(0) / n**0.5


@pytest.mark.parametrize("kind", ["gmm", "maf"])
def test_latent_draws_match_the_codes_mean_and_covariance(kind, fitted, codes):
    """A mixture fitted by EM (maximum likelihood) and a flow fitted by maximum likelihood match
    the first two moments of the codes; draws of 20,000 agree with them within 4 standard errors
    (the codes' own sampling error added for the flow, whose fit is not exact)."""
    with pg.seeding.seeded(1):
        draws = fitted[kind].sample(20000)
    mean, mean_se, cov, cov_se = _stderr_of_moments(draws)
    target_mean, target_mean_se, target_cov, target_cov_se = _stderr_of_moments(codes)
    if kind == "gmm":  # EM's fixed point reproduces the codes' moments (up to reg_covar)
        target_mean_se, target_cov_se = 0 * target_mean_se, 0 * target_cov_se
    z_mean = (mean - target_mean).abs() / (mean_se**2 + target_mean_se**2).sqrt()
    z_cov = (cov - target_cov).abs() / (cov_se**2 + target_cov_se**2).sqrt()
    assert z_mean.max() < 4, (kind, mean, target_mean)
    assert z_cov.max() < 4, (kind, cov, target_cov)


def test_fitting_refuses_what_it_cannot_fit(trained_vae, digits):
    model, guide = trained_vae
    with pytest.raises(UnknownNameError, match="unknown sampler 'nope'"):
        pg.fit_sampler("nope", model, guide, digits)
    with pytest.raises(ConfigError, match="nothing to fit"):
        pg.fit_sampler("prior", model, guide, digits)
    with pytest.raises(ConfigError, match="has no option 'width'"):
        pg.fit_sampler("gmm", model, guide, digits, width=3)
    with pytest.raises(ConfigError, match="unknown sampler 'nope'"):
        pg.sample(model, 2, sampler="nope")
    with pytest.raises(ConfigError, match="pass guide= and data="):
        pg.sample(model, 2, sampler="maf")
    with pytest.raises(ConfigError, match="takes no labels"):
        pg.sample(model, 2, y=torch.tensor([0, 1]))
    m2 = pg.create_model("m2", digits, latent_dim=2)
    with pytest.raises(ConfigError, match="discrete latent site"):
        pg.fit_sampler("gmm", m2, pg.create_guide("m2", m2), digits)


def test_a_sampler_for_another_model_is_refused(fitted, digits):
    other = pg.create_model("vae", digits, latent_dim=3)
    with pytest.raises(ConfigError, match="fitted to the latent sites"):
        pg.sample(other, 2, sampler=fitted["gmm"])


def test_frechet_distance_closed_forms():
    """FD of a set with itself is 0; a shift by d adds |d|^2 exactly (equal covariances); scaling
    centred features by c gives (1 - c)^2 tr(S) exactly (equal means, commuting covariances)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=generator) @ torch.randn(6, 6, generator=generator)
    assert abs(frechet_distance(a, a)) < 1e-8
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.0, 0.25])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)
    centred = a - a.mean(0)
    trace = float(torch.cov(centred.T.double()).trace())
    assert frechet_distance(centred, 0.5 * centred) == pytest.approx(0.25 * trace, rel=1e-6)
    with pytest.raises(DataError, match="features"):
        frechet_distance(a, a[:, :3])


def test_classifier_fd_is_zero_on_itself_and_grows_with_a_shift():
    grey = pg.load_dataset("digits", binarize=False)
    classifier = train_classifier(grey.train, grey.train_labels, epochs=8, seed=0)
    assert classifier.accuracy(grey.test, grey.test_labels) > 0.8
    assert abs(sample_fd(classifier, grey.test, grey.test)) < 1e-6
    held_out = sample_fd(classifier, grey.val, grey.test)
    shifted = [sample_fd(classifier, torch.roll(grey.val, k, dims=-1), grey.test) for k in (1, 2, 3)]
    assert held_out < shifted[0] < shifted[1] < shifted[2], (held_out, shifted)

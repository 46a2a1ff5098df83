"""Reference models with exact log p(x): the scorer and the trainer against closed-form answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from sklearn.decomposition import PCA, FactorAnalysis
from sklearn.mixture import GaussianMixture

import pyro_genmod as pg
from pyro_genmod.arviz_bridge import psis_khat
from pyro_genmod.experiment import score
from pyro_genmod.tasks import sampled_dataset

SIZES = dict(num_train=2000, num_val=500, num_test=1000)


def exact(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model.exact_log_likelihood(x)


def monte_carlo_stderr(model, guide, x, num_samples: int, seed: int) -> float:
    """Monte Carlo standard error of the mean IS estimate over ``x``, from independent draws.

    Per point, the delta method gives se_i = sd(w) / (sqrt(K) mean(w)) for log mean(w); points
    are independent, so the mean over N points has se = sqrt(sum se_i^2) / N.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        log_w = pg.log_importance_weights(model, guide, x, num_samples).double()
    w = (log_w - log_w.max(dim=0).values).exp()
    per_point = w.std(dim=0) / (math.sqrt(num_samples) * w.mean(dim=0))
    return float(per_point.pow(2).sum().sqrt() / x.shape[0])


def linear_truth(name: str, dim: int, latent_dim: int, seed: int):
    """A PPCA or FA with known parameters: unit-scale loadings, noise sd between 0.22 and 1."""
    torch.manual_seed(seed)
    truth = pg.create_model(name, (dim,), latent_dim=latent_dim, init_scale=1.0)
    with torch.no_grad():
        truth.loc.normal_()
        truth.log_noise_scale.uniform_(-1.5, 0.0)
    return truth


def fit_two_stage(model, guide, data, epochs: int, lr: float, **options):
    """Adam at ``lr``, then half as many epochs at lr/10 to settle the SVI noise."""
    pg.fit(model, guide, data, epochs=epochs, lr=lr, progress=False, seed=0, **options)
    pg.fit(model, guide, data, epochs=epochs // 2, lr=lr / 10, progress=False, seed=1, **options)


def svi_linear(name: str):
    """Data (D=10, q=3) from known parameters, and the model fit to it by SVI (Trace_ELBO) with a
    linear mean-field encoder, which contains the exact posterior of an ML solution."""
    data = sampled_dataset(linear_truth(name, 10, 3, seed=0), **SIZES, seed=1)
    pyro.set_rng_seed(0)
    model = pg.create_model(name, data, latent_dim=3)
    guide = pg.create_guide("mean_field", model, hidden=())
    fit_two_stage(model, guide, data, epochs=40, lr=0.03, batch_size=500)
    return data, model, guide


@pytest.fixture(scope="module")
def ppca_fit():
    """PPCA by SVI, and the closed-form ML solution on the same training set."""
    data, model, guide = svi_linear("ppca")
    closed_form = pg.create_model("ppca", data, latent_dim=3).fit_closed_form(data.train)
    return data, model, guide, closed_form


@pytest.fixture(scope="module")
def fa_fit():
    """Factor analysis (unequal noise variances) by SVI."""
    return svi_linear("factor_analysis")


@pytest.fixture(scope="module")
def gmm_fit():
    """A 3-component full-covariance mixture in 4-D, trained by SVI with the categorical guide and
    TraceEnum_ELBO (k enumerated exactly), started from the same k-means clustering as sklearn's
    EM."""
    torch.manual_seed(0)
    truth = pg.create_model("gmm", (4,), num_components=3, init_scale=3.0)
    with torch.no_grad():
        truth.raw_scale_tril.normal_(0, 0.3)
    data = sampled_dataset(truth, **SIZES, seed=1)
    pyro.set_rng_seed(0)
    model = pg.create_model("gmm", data, num_components=3).init_from_data(data.train, seed=0)
    guide = pg.create_guide("categorical", model)
    fit_two_stage(model, guide, data, epochs=50, lr=0.05, batch_size=500, objective="traceenum_elbo")
    return data, model, guide


@pytest.fixture(scope="module")
def fits(ppca_fit, fa_fit, gmm_fit):
    return {"ppca": ppca_fit[:3], "factor_analysis": fa_fit, "gmm": gmm_fit}


# 1. The IS estimate against the exact log p(x) ----------------------------------------------


@pytest.mark.parametrize("name", ["ppca", "factor_analysis", "gmm"])
def test_exact_posterior_makes_the_estimate_exact_for_every_k(fits, name):
    """With q = p(z|x) every weight is p(x): the estimate is exact for K = 1, 10, 1000, to 1e-4
    nats per point (float32 round-off on sums of terms of magnitude ~10-100 is ~1e-5)."""
    data, model, _ = fits[name]
    x = data.test[:300]
    guide = pg.create_guide("exact_posterior", model)
    truth = exact(model, x)
    for k in (1, 10, 1000):
        ll = pg.log_likelihood(model, guide, x, k, seed=k)
        assert float((ll.per_point - truth).abs().max()) < 1e-4, (name, k)
        assert float((ll.elbo - truth).abs().max()) < 1e-4, "constant weights: ELBO = log p(x)"


def test_exact_posterior_on_a_20_dim_latent_model_in_float32_and_float64():
    """The same identity for q = 20 latent dimensions; and end to end in float64."""
    model = linear_truth("factor_analysis", 25, 20, seed=3)
    x = pg.sample(model, 100, seed=4)
    ll = pg.log_likelihood(model, pg.create_guide("exact_posterior", model), x, 100, seed=0)
    assert float((ll.per_point - exact(model, x)).abs().max()) < 1e-4
    model, x = model.double(), x.double()
    ll = pg.log_likelihood(model, pg.create_guide("exact_posterior", model), x, 100, seed=0)
    assert ll.per_point.dtype == torch.float64
    assert float((ll.per_point - exact(model, x)).abs().max()) < 1e-8


@pytest.mark.parametrize("name", ["ppca", "factor_analysis", "gmm"])
def test_trained_guide_with_k5000_matches_exact(fits, name):
    """Mean-field (categorical for the mixture) proposal, K = 5000, 300 test points: the mean
    error is under 0.05 nats and under 4 Monte Carlo standard errors (plus the 1e-4 float32
    floor of the test above, since a near-exact guide has a vanishing standard error)."""
    data, model, guide = fits[name]
    x = data.test[:300]
    ll = pg.log_likelihood(model, guide, x, 5000, seed=0)
    error = float((ll.per_point - exact(model, x)).mean())
    stderr = monte_carlo_stderr(model, guide, x, 5000, seed=1)
    assert abs(error) < 0.05, (name, error)
    assert abs(error) < 4 * stderr + 1e-4, (name, error, stderr)


# 2. ELBO <= IS(10) <= IS(1000) <= exact + 3 SE -----------------------------------------------


@pytest.mark.parametrize("name", ["ppca", "factor_analysis", "gmm"])
def test_bounds_are_ordered(fits, name):
    """With a fresh (untrained) guide the gaps are large: ELBO <= IS(10) holds draw by draw
    (mean <= log-mean-exp of the same weights); IS(1000) - IS(10) is checked to exceed 3 Monte
    Carlo standard errors of IS(10), so the order is not luck; IS(1000) is biased low, so it
    stays below exact + 3 standard errors."""
    data, model, _ = fits[name]
    x = data.test[:300]
    torch.manual_seed(5)
    guide = pg.create_guide("categorical" if name == "gmm" else "mean_field", model)
    ll10 = pg.log_likelihood(model, guide, x, 10, seed=0)
    ll1000 = pg.log_likelihood(model, guide, x, 1000, seed=1)
    se10 = monte_carlo_stderr(model, guide, x, 10, seed=2)
    se1000 = monte_carlo_stderr(model, guide, x, 1000, seed=3)
    truth = float(exact(model, x).mean())
    assert ll10.elbo_mean <= ll10.mean
    assert ll10.mean + 3 * se10 <= ll1000.mean
    assert ll1000.mean <= truth + 3 * se1000


# 3-5. SVI against the closed-form and EM solutions -------------------------------------------


def test_closed_form_ppca_is_the_maximum_and_matches_sklearn(ppca_fit):
    """Tipping & Bishop's solution beats SVI and sklearn's PCA parameters on the training set
    (it is the maximum), and our exact log p(x) at sklearn's parameters equals PCA.score."""
    data, model, _, closed_form = ppca_fit
    pca = PCA(3).fit(data.train.numpy())
    from_sklearn = pg.create_model("ppca", data, latent_dim=3)
    with torch.no_grad():
        from_sklearn.loc.copy_(torch.as_tensor(pca.mean_))
        spread = np.sqrt(pca.explained_variance_ - pca.noise_variance_)
        from_sklearn.weight.copy_(torch.as_tensor(pca.components_.T * spread))
        from_sklearn.log_noise_scale.fill_(0.5 * math.log(pca.noise_variance_))
    assert float(exact(from_sklearn, data.test).mean()) == pytest.approx(pca.score(data.test.numpy()), abs=1e-4)
    best = float(exact(closed_form, data.train).mean())
    assert best >= float(exact(from_sklearn, data.train).mean()) - 1e-5
    assert best >= float(exact(model, data.train).mean()) - 1e-5


def test_ppca_svi_matches_closed_form_on_synthetic_data(ppca_fit):
    """Held-out log p(x) per dimension of the SVI fit within 0.01 nats of the ML solution."""
    data, model, _, closed_form = ppca_fit
    gap = float((exact(model, data.test) - exact(closed_form, data.test)).mean()) / 10
    assert abs(gap) < 0.01, gap


def test_ppca_svi_matches_closed_form_on_breast_cancer():
    """The same on scikit-learn's bundled breast-cancer data (30 standardized features, q=5)."""
    data = pg.load_dataset("breast_cancer")
    pyro.set_rng_seed(0)
    model = pg.create_model("ppca", data, latent_dim=5)
    guide = pg.create_guide("mean_field", model, hidden=())
    fit_two_stage(model, guide, data, epochs=150, lr=0.05, batch_size=400)
    closed_form = pg.create_model("ppca", data, latent_dim=5).fit_closed_form(data.train)
    gap = float((exact(model, data.test) - exact(closed_form, data.test)).mean()) / 30
    assert abs(gap) < 0.01, gap


def test_factor_analysis_svi_matches_sklearn_em(fa_fit):
    """Held-out log p(x) per dimension within 0.02 nats of sklearn's FactorAnalysis (EM, run to
    convergence); and our exact log p(x) at sklearn's parameters equals FactorAnalysis.score."""
    data, model, _ = fa_fit
    em = FactorAnalysis(3, tol=1e-8, max_iter=10_000, random_state=0).fit(data.train.numpy())
    gap = (float(exact(model, data.test).mean()) - em.score(data.test.numpy())) / 10
    assert abs(gap) < 0.02, gap
    from_sklearn = pg.create_model("factor_analysis", data, latent_dim=3)
    with torch.no_grad():
        from_sklearn.loc.copy_(torch.as_tensor(em.mean_))
        from_sklearn.weight.copy_(torch.as_tensor(em.components_.T))
        from_sklearn.log_noise_scale.copy_(torch.as_tensor(0.5 * np.log(em.noise_variance_)))
    assert float(exact(from_sklearn, data.test).mean()) == pytest.approx(em.score(data.test.numpy()), abs=1e-4)


def test_gmm_svi_matches_sklearn_em(gmm_fit):
    """Held-out average log p(x) within 1% of sklearn's GaussianMixture (EM, full covariances,
    same C, run to convergence: the default tol=1e-3 stops early); and our exact log p(x) at
    sklearn's parameters equals GaussianMixture.score."""
    data, model, _ = gmm_fit
    em = GaussianMixture(3, covariance_type="full", tol=1e-8, max_iter=10_000, random_state=0).fit(data.train.numpy())
    reference = em.score(data.test.numpy())
    ours = float(exact(model, data.test).mean())
    assert abs(ours - reference) < 0.01 * abs(reference), (ours, reference)
    from_sklearn = pg.create_model("gmm", data, num_components=3)
    with torch.no_grad():
        from_sklearn.means.copy_(torch.as_tensor(em.means_))
        from_sklearn.mixture_logits.copy_(torch.as_tensor(np.log(em.weights_)))
        tril = torch.linalg.cholesky(torch.as_tensor(em.covariances_))
        from_sklearn.raw_scale_tril.copy_(torch.distributions.transform_to(
            torch.distributions.constraints.lower_cholesky).inv(tril))
    assert float(exact(from_sklearn, data.test).mean()) == pytest.approx(reference, abs=1e-4)


# 6. PSIS k-hat -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ppca", "factor_analysis"])
def test_khat_is_low_for_the_exact_posterior(fits, name):
    """Constant weights (up to round-off) have no heavy tail: every k-hat is below 0.5. Where
    round-off leaves 4 or fewer weights strictly above PSIS's tail cutoff (the (M+1)-th largest,
    M = ceil(min(0.2 K, 3 sqrt K))) there is no tail to fit: ArviZ returns inf, reported as NaN.
    Checked on the raw weights that this explains every NaN."""
    data, model, _ = fits[name]
    x = data.test[:200]
    guide = pg.create_guide("exact_posterior", model)
    ll = pg.log_likelihood(model, guide, x, 1000, seed=0)
    assert ll.khat_max < 0.5 and np.isfinite(ll.khat).mean() > 0.5
    with torch.no_grad():
        log_w = pg.log_importance_weights(model, guide, x, 1000).T.double().numpy()
    khat = psis_khat(log_w)
    cutoff = np.sort(log_w, axis=1)[:, -math.ceil(min(0.2 * 1000, 3 * math.sqrt(1000))) - 1]
    no_tail = (log_w > cutoff[:, None]).sum(axis=1) <= 4
    assert (np.isnan(khat) == no_tail).all() and (khat[~no_tail] < 0.5).all()


def test_khat_is_high_for_the_prior_proposal_with_20_latent_dims():
    """The prior as proposal for q = 20 latent dimensions: weights p(x|z) are extremely uneven,
    k-hat exceeds 0.7 on average and for at least 90% of points."""
    model = linear_truth("ppca", 25, 20, seed=3)
    with torch.no_grad():
        model.log_noise_scale.fill_(-0.5)
    x = pg.sample(model, 100, seed=4)
    ll = pg.log_likelihood(model, pg.create_guide("prior", model), x, 1000, seed=0)
    assert ll.khat_mean > 0.7 and ll.khat_above_07 >= 0.9, (ll.khat_mean, ll.khat_above_07)


# The existing guides with these models, and the errors --------------------------------------


@pytest.mark.parametrize("model_name", ["ppca", "factor_analysis"])
@pytest.mark.parametrize("guide_name", ["mean_field", "full_rank", "delta", "exact_posterior", "prior"])
def test_guides_train_and_score_on_linear_gaussian_models(model_name, guide_name):
    """Every continuous family trains on the linear-Gaussian models and is scored (a Delta guide
    through the prior as proposal); the estimate stays below exact log p(x) + 3 SE."""
    model = linear_truth(model_name, 6, 2, seed=0)
    data = sampled_dataset(model, 200, 50, 50, seed=1)
    guide = pg.create_guide(guide_name, model)
    result = pg.fit(model, guide, data, epochs=2, batch_size=50, progress=False)
    assert result.epochs_run == 2 and math.isfinite(result.history[-1]["val_elbo"])
    ll, proposal = score(model, guide, data.test, 200)
    assert proposal == ("prior" if guide_name == "delta" else guide_name)
    assert ll.mean <= float(exact(model, data.test).mean()) + 3 * ll.stderr


@pytest.mark.parametrize("guide_name", ["categorical", "exact_posterior", "prior"])
@pytest.mark.parametrize("objective", ["trace_elbo", "traceenum_elbo"])
def test_discrete_guides_train_and_score_the_mixture(guide_name, objective):
    """The mixture trains with each discrete-capable guide, sampled (Trace_ELBO, score function)
    or enumerated (TraceEnum_ELBO); with enumeration and the exact posterior, the training ELBO
    is log p(x) itself."""
    torch.manual_seed(0)
    model = pg.create_model("gmm", (2,), num_components=3, init_scale=2.0)
    data = sampled_dataset(model, 200, 50, 50, seed=1)
    guide = pg.create_guide(guide_name, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Trace_ELBO notes that it cannot enumerate
        result = pg.fit(model, guide, data, epochs=2, batch_size=50, progress=False, objective=objective)
    assert math.isfinite(result.history[-1]["train_elbo"])
    if guide_name == "exact_posterior" and objective == "traceenum_elbo":
        loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, data.val)
        assert -float(loss.detach()) == pytest.approx(float(exact(model, data.val).sum()), rel=1e-5)
    ll = pg.log_likelihood(model, guide, data.test, 100, seed=0)
    assert ll.mean <= float(exact(model, data.test).mean()) + 3 * ll.stderr


@pytest.mark.parametrize("guide_name", ["mean_field", "full_rank", "delta"])
def test_continuous_guides_refuse_the_mixture_naming_the_discrete_site(guide_name):
    model = pg.create_model("gmm", (2,), num_components=3)
    with pytest.raises(pg.PairingError, match="'k' discrete.*enum"):
        pg.create_guide(guide_name, model)


def test_exact_posterior_refuses_a_model_without_a_closed_form():
    model = pg.create_model("vae", (4,), latent_dim=2, likelihood="gaussian")
    with pytest.raises(pg.PairingError, match="no closed-form posterior"):
        pg.create_guide("exact_posterior", model)


def test_categorical_refuses_continuous_sites():
    with pytest.raises(pg.PairingError, match="'z' continuous.*categorical"):
        pg.create_guide("categorical", pg.create_model("ppca", (4,)))


def test_bad_inputs_raise_specific_errors():
    with pytest.raises(pg.ConfigError, match="latent_dim < data dimension"):
        pg.create_model("ppca", (3,), latent_dim=3).fit_closed_form(torch.randn(10, 3))
    with pytest.raises(pg.DataError, match="point shape"):
        pg.create_model("factor_analysis", (3,)).exact_log_likelihood(torch.randn(10, 4))
    with pytest.raises(pg.ConfigError, match="num_components must be positive"):
        pg.create_model("gmm", (3,), num_components=0)

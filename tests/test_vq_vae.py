"""VQ-VAE (models/vq_vae.py, guides/vq.py, objectives/vq_elbo.py): log p(x) by importance sampling
equals exact enumeration over the codebook, the straight-through ELBO's value is the ELBO, it trains
on digits, and bad options are one-line ConfigErrors."""

from __future__ import annotations

import math

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.bench.metrics import linear_probe_accuracy
from pyro_genmod.errors import DataError
from pyro_genmod.importance import log_importance_weights
from pyro_genmod.objectives import get_objective

TINY = {"num_positions": 2, "num_codes": 4, "code_dim": 3, "hidden": (16,)}  # 16 configurations


@pytest.fixture(scope="module")
def tiny(digits) -> pg.Dataset:
    return pg.Dataset(name="digits", train=digits.train[:96], val=digits.val[:16], test=digits.test[:24],
                      binarization=digits.binarization, options=dict(digits.options))


def _tiny_pair(tiny, epochs: int = 0):
    torch.manual_seed(0)
    model = pg.create_model("vq_vae", tiny, **TINY)
    guide = pg.create_guide("vq", model, hidden=(16,))
    with torch.no_grad():  # a prior far from uniform, so the test sees it
        model.prior_logits.copy_(torch.randn_like(model.prior_logits))
    if epochs:
        pg.fit(model, guide, tiny, epochs=epochs, batch_size=32, progress=False, seed=0)
    return model, guide


@pytest.mark.filterwarnings("ignore::pyro_genmod.errors.KhatWarning")  # 16 configurations: tied prior weights
def test_is_log_likelihood_matches_exact_enumeration(tiny):
    model, guide = _tiny_pair(tiny, epochs=2)
    x = tiny.test
    exact = model.exact_log_likelihood(x)
    num = 4000
    estimate = pg.log_likelihood(model, guide, x, num_samples=num, seed=0).per_point
    # per-point Monte Carlo s.e. of log p-hat by the delta method, from an independent set of weights
    with torch.no_grad():
        log_w = log_importance_weights(model, guide, x, num).double()
    w = (log_w - log_w.max(0).values).exp()
    se = (w.std(0) / w.mean(0) / math.sqrt(num)).float()
    assert bool((se < 0.2).all()), se.max()  # the check is sharp: the estimator has converged
    gap = (estimate - exact).abs()
    assert bool((gap < 4 * se + 1e-4).all()), f"max |IS - exact| / se = {float((gap / se).max()):.2f}"
    # the prior as proposal gives the same value (a different estimator of the same sum)
    prior = pg.log_likelihood(model, pg.create_guide("prior", model), x, num_samples=num, seed=1).per_point
    assert bool(((prior - exact).abs() < 0.5).all())


def test_exact_log_likelihood_is_the_sum_over_codes(tiny):
    model, _ = _tiny_pair(tiny)
    x = tiny.test[:3]
    terms = []
    for a in range(4):
        for b in range(4):
            codes = torch.tensor([[a, b]]).expand(3, 2)
            log_prior = model.prior_distributions()["codes"].log_prob(codes)
            terms.append(log_prior + model.likelihood({"codes": codes}).log_prob(x))
    torch.testing.assert_close(model.exact_log_likelihood(x), torch.logsumexp(torch.stack(terms), 0))


def test_vq_elbo_value_is_the_elbo(tiny):
    """The straight-through objective's value estimates the same ELBO the scorer reports."""
    model, guide = _tiny_pair(tiny)
    x = tiny.test
    objective = get_objective("vq_elbo", num_particles=2000)
    _, value = objective(model, guide, x)
    elbo = pg.log_likelihood(model, guide, x, num_samples=2000, seed=0).elbo
    # elbo is per point over 2000 draws; value sums the points' analytic-KL estimates
    assert abs(-value / x.shape[0] - float(elbo.mean())) < 0.05 * abs(float(elbo.mean()))


def test_guide_mode_is_nearest_codebook_entry(tiny):
    model, guide = _tiny_pair(tiny)
    e = guide.encoder_vectors(tiny.test)
    nearest = torch.cdist(e, model.codebook.unsqueeze(0).expand(e.shape[0], -1, -1)).argmin(-1)
    assert torch.equal(guide.posterior(tiny.test)["codes"].base_dist.probs.argmax(-1), nearest)


@pytest.mark.filterwarnings("ignore::pyro_genmod.errors.KhatWarning")
def test_defensive_prior_mixture_is_a_valid_proposal(tiny):
    model, guide = _tiny_pair(tiny, epochs=2)
    x = tiny.test
    plain = guide.posterior(x)["codes"].base_dist.probs
    guide.prior_weight = 0.3
    mixed = guide.posterior(x)["codes"].base_dist.probs
    torch.testing.assert_close(mixed, 0.7 * plain + 0.3 * model.prior_logits.softmax(-1))
    # the weights' prior-to-proposal ratio is bounded by 1/alpha per position; the estimate is the same sum
    num = 4000
    with torch.no_grad():
        log_w = log_importance_weights(model, guide, x, num).double()
    w = (log_w - log_w.max(0).values).exp()
    se = (w.std(0) / w.mean(0) / math.sqrt(num)).float()
    estimate = pg.log_likelihood(model, guide, x, num_samples=num, seed=0).per_point
    gap = (estimate - model.exact_log_likelihood(x)).abs()
    assert bool((gap < 4 * se + 1e-4).all()), f"max |IS - exact| / se = {float((gap / se).max()):.2f}"
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(pg.ConfigError, match="prior_weight"):
            pg.create_guide("vq", model, prior_weight=bad)


def test_encode_gives_each_positions_code_probabilities(tiny):
    # Regression (issue 22): encode's generic path read the site's support independent(integer_interval)
    # as continuous and returned Categorical.mean, all NaN, which reached the bench's linear probe.
    _, guide = _tiny_pair(tiny)
    assert not hasattr(guide, "representation")  # the generic path is the one under test
    codes = pg.encode(guide, tiny.test)
    P, K = TINY["num_positions"], TINY["num_codes"]
    assert codes.shape == (tiny.test.shape[0], P * K) and torch.isfinite(codes).all()
    expected = guide.posterior(tiny.test)["codes"].base_dist.probs
    torch.testing.assert_close(codes.reshape(-1, P, K), expected)
    draws = pg.encode(guide, tiny.test, num_samples=3)
    assert draws.shape == (3, tiny.test.shape[0], P) and bool(((draws >= 0) & (draws < K)).all())
    labels = torch.arange(tiny.test.shape[0]) % 2
    accuracy = linear_probe_accuracy(codes, labels, codes, labels)
    assert 0.0 <= accuracy <= 1.0


def test_linear_probe_refuses_non_finite_features():
    features = torch.zeros(6, 3)
    features[2, 1] = float("nan")
    with pytest.raises(DataError, match="train_features has 1 non-finite values in 1 columns"):
        linear_probe_accuracy(features, torch.tensor([0, 1] * 3), torch.zeros(6, 3), torch.tensor([0, 1] * 3))


def test_decode_and_reconstruct_use_the_mode_codes(tiny):
    model, guide = _tiny_pair(tiny, epochs=1)
    x = tiny.test[:5]
    mode = guide.posterior(x)["codes"].base_dist.probs.argmax(-1)  # (N, P): nearest codebook entries
    with torch.no_grad():
        expected = model.likelihood({"codes": mode}).mean
    torch.testing.assert_close(pg.decode(model, pg.encode(guide, x)), expected)
    torch.testing.assert_close(pg.reconstruct(model, guide, x), expected)
    one_hot = torch.nn.functional.one_hot(mode, TINY["num_codes"]).flatten(1).float()
    torch.testing.assert_close(pg.decode(model, one_hot), expected)
    path = pg.interpolate(model, guide, x[:2], x[2:4], steps=3)
    assert path.shape == (2, 3, *tiny.shape)
    torch.testing.assert_close(path[:, 0], expected[:2])
    with pytest.raises(DataError, match=r"shape \(N, 8\)"):
        pg.decode(model, torch.zeros(2, TINY["num_positions"]))


def test_trains_on_digits_and_scores(tiny):
    torch.manual_seed(0)
    model = pg.create_model("vq_vae", tiny, num_positions=4, num_codes=8, hidden=(32,))
    guide = pg.create_guide("vq", model, hidden=(32,))
    before = model.codebook.detach().clone(), model.prior_logits.detach().clone()
    result = pg.fit(model, guide, tiny, epochs=3, batch_size=32, progress=False, seed=0)
    assert result.options["objective"] == "vq_elbo"  # the model's default
    assert all(math.isfinite(h["val_elbo"]) for h in result.history)
    assert not torch.equal(before[0], model.codebook) and not torch.equal(before[1], model.prior_logits)
    ll = pg.log_likelihood(model, guide, tiny.test, num_samples=50, seed=0)
    assert torch.isfinite(ll.per_point).all() and bool((ll.per_point >= ll.elbo - 1e-4).all())
    assert pg.sample(model, 5).shape == (5, *tiny.shape)


def test_tracegraph_elbo_also_trains_it(tiny):
    model, guide = _tiny_pair(tiny)
    result = pg.fit(model, guide, tiny, epochs=1, batch_size=32, objective="tracegraph_elbo", progress=False)
    assert math.isfinite(result.history[-1]["val_elbo"])


@pytest.mark.parametrize(("options", "match"), [
    ({"num_codes": 1}, "num_codes"),
    ({"num_positions": 0}, "num_positions"),
    ({"code_dim": "four"}, "code_dim"),
    ({"codebook_size": 8}, "no option 'codebook_size'"),
])
def test_bad_model_options_are_one_line_config_errors(options, match):
    with pytest.raises(pg.ConfigError, match=match) as info:
        pg.create_model("vq_vae", (1, 8, 8), **options)
    assert "\n" not in str(info.value)


def test_bad_pairs_and_guide_options_are_refused(tiny):
    model = pg.create_model("vq_vae", tiny, **TINY)
    with pytest.raises(pg.ConfigError, match="temperature") as info:
        pg.create_guide("vq", model, temperature=0.0)
    assert "\n" not in str(info.value)
    with pytest.raises(pg.PairingError, match="codebook"):
        pg.create_guide("vq", pg.create_model("vae", tiny))
    with pytest.raises(pg.PairingError):
        pg.create_guide("mean_field", model)
    vae = pg.create_model("vae", tiny, latent_dim=2)
    with pytest.raises(pg.ConfigError, match="'vq_vae' model with the 'vq' guide only"):
        get_objective("vq_elbo")(vae, pg.create_guide("mean_field", vae), tiny.test)
    big = pg.create_model("vq_vae", tiny)
    with pytest.raises(pg.ConfigError, match="use pg.log_likelihood"):
        big.exact_log_likelihood(tiny.test)

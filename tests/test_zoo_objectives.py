"""The zoo's objectives and regularizers beyond the ELBO and IWAE (issue 22): beta-TCVAE,
FactorVAE, InfoVAE, WAE-MMD, MIWAE, PIWAE and CIWAE, against their closed forms, and on pairs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import pyro_genmod as pg
from pyro_genmod.factories import pairing_problem
from pyro_genmod.objectives import get_objective, parse_objective
from pyro_genmod.objectives._aggregate import mmd
from pyro_genmod.objectives.beta_tcvae import decomposition
from pyro_genmod.objectives.factor_vae import permute_dims

NEW = ("beta_tcvae", "factor_vae", "info_vae", "wae_mmd", "miwae", "piwae", "ciwae")
MMD_BASED = ("info_vae", "wae_mmd")


@pytest.fixture(scope="module")
def pair(digits):
    """A small VAE with its mean-field guide, trained 1 epoch, and a batch of 16 test points."""
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=3, hidden=(32,))
    guide = pg.create_guide("mean_field", model, hidden=(32,))
    pg.fit(model, guide, digits, epochs=1, batch_size=256, progress=False)
    return model, guide, digits.test[:16]


def value(objective, model, guide, x, seed=3) -> float:
    torch.manual_seed(seed)
    return objective(model, guide, x)[1]


def gradients(objective, model, guide, x, seed=3) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's and the guide's gradient of one call, flattened."""
    for p in [*model.parameters(), *guide.parameters()]:
        p.grad = None
    torch.manual_seed(seed)
    objective(model, guide, x)[0].backward()
    flat = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (model, guide)]
    return flat[0], flat[1]


# --- names and options ------------------------------------------------------------------------

def test_new_objectives_are_listed_and_take_options_in_their_name():
    assert set(NEW) <= set(pg.list_objectives())
    assert parse_objective("beta_tcvae(beta=6, dataset_size=1000)") == ("beta_tcvae", {"beta": 6, "dataset_size": 1000})
    objective = get_objective("Info_VAE(alpha=1, lam=100, kernel=imq)", 2)
    assert (objective.name, objective.alpha, objective.lam, objective.kernel, objective.num_particles) == (
        "info_vae", 1.0, 100.0, "imq", 2)
    assert get_objective("factor_vae(hidden=[8, 8])").hidden == (8, 8)
    assert get_objective("miwae", 5, num_estimates=3).num_estimates == 3
    bad = [
        ("wae_mmd(alpha=1)", "objective 'wae_mmd' has no option 'alpha'; its options are: kernel, kernel_scale, lam"),
        ("ciwae(beta=yes)", "objective 'ciwae' option 'beta' must be a number, got 'yes'"),
        ("ciwae(beta=2)", "objective 'ciwae' option 'beta' must lie in [0, 1], got 2"),
        ("miwae(num_estimates=0)", "objective 'miwae' option 'num_estimates' (M) must be a positive integer, got 0"),
        ("info_vae(kernel=gauss)", "objective 'info_vae' option 'kernel' must be one of ['rbf', 'imq'], got 'gauss'"),
        ("beta_tcvae(6)", "objective 'beta_tcvae(6)': the options are not option=value pairs"),
        ("iwae:5", "objective 'iwae:5' is not a name"),
    ]
    for spec, message in bad:
        with pytest.raises(pg.ConfigError) as problem:
            get_objective(spec)
        assert str(problem.value).startswith(message) and "\n" not in str(problem.value)


# --- beta-TCVAE --------------------------------------------------------------------------------

@pytest.mark.parametrize("guide_name", ["mean_field", "full_rank"])
def test_beta_tcvae_terms_add_up_to_the_elbo_kl_term(pair, guide_name):
    model, guide, x = pair
    if guide_name != "mean_field":
        torch.manual_seed(1)
        guide = pg.create_guide(guide_name, model, hidden=(32,))
    for size in (None, 1000):
        torch.manual_seed(0)
        terms = decomposition(model, guide, x, num_particles=3, dataset_size=size)
        kl = terms["log_q"] - terms["log_prior"]
        torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dwkl"], kl, atol=1e-4, rtol=1e-5)
    # alpha = beta = gamma = 1 is the ELBO, draw for draw (the same seed draws the same z)
    elbo_weights = get_objective("beta_tcvae(alpha=1, beta=1, gamma=1)")
    assert value(elbo_weights, model, guide, x) == pytest.approx(value(get_objective("trace_elbo"), model, guide, x), rel=1e-5)


def test_beta_tcvae_estimates_the_batch_mixture_and_its_marginals(pair):
    model, guide, x = pair
    torch.manual_seed(0)
    terms = decomposition(model, guide, x)
    torch.manual_seed(0)  # the same draws
    q = guide.posterior(x)["z"].base_dist
    z = q.rsample()
    weights = Categorical(logits=torch.zeros(x.shape[0]))
    mixture = MixtureSameFamily(weights, Independent(Normal(q.loc, q.scale), 1))
    log_qz = terms["log_q"] - terms["mi"]
    torch.testing.assert_close(log_qz[0], mixture.log_prob(z), atol=1e-4, rtol=1e-5)
    per_coordinate = MixtureSameFamily(weights, Normal(q.loc.T, q.scale.T))  # batch: the D coordinates
    product = per_coordinate.log_prob(z).sum(-1)
    torch.testing.assert_close((log_qz - terms["tc"])[0], product, atol=1e-4, rtol=1e-5)
    # minibatch-weighted sampling with N points: log q(z) ~ logsumexp_j log q(z|x_j) - log(N M)
    torch.manual_seed(0)
    weighted = decomposition(model, guide, x, dataset_size=500)
    torch.testing.assert_close(weighted["mi"] - terms["mi"], torch.full_like(terms["mi"], math.log(500)))
    torch.testing.assert_close(weighted["tc"] - terms["tc"], torch.full_like(terms["tc"], 2 * math.log(500)))


def test_beta_tcvae_refuses_guides_without_gaussian_marginals(pair, digits):
    model, _, x = pair
    for guide_name in ("iaf", "delta"):
        guide = pg.create_guide(guide_name, model, hidden=(8,))
        with pytest.raises(pg.ConfigError, match=f"objective 'beta_tcvae' needs the one-dimensional marginals of "
                                                  f"q\\(z\\|x\\), which guide '{guide_name}' does not give"):
            get_objective("beta_tcvae")(model, guide, x)
    hierarchy = pg.create_model("vae2", digits, latent_dims=(3, 2), hidden=(8, 8))
    with pytest.raises(pg.ConfigError, match="guide 'top_down' samples its sites in its own program"):
        get_objective("beta_tcvae")(hierarchy, pg.create_guide("top_down", hierarchy, hidden=(8,)), x)


# --- MMD: InfoVAE and WAE-MMD ------------------------------------------------------------------

def expected_rbf(mean: torch.Tensor, variance: float, c: float) -> float:
    """E exp(-|w|^2 / C) for w ~ N(mean, variance I_D)."""
    d = mean.numel()
    return (c / (c + 2 * variance)) ** (d / 2) * math.exp(-float(mean.square().sum()) / (c + 2 * variance))


def test_mmd_is_zero_on_identical_samples_and_unbiased_against_its_closed_form():
    torch.manual_seed(0)
    a = torch.randn(50, 3)
    for kernel in ("rbf", "imq"):
        assert float(mmd(a, a.clone(), kernel, unbiased=False)) == pytest.approx(0.0, abs=1e-6)
    # two Gaussians in D = 3, N(0, I) and N(m, s^2 I); RBF with C = 2 D: the exact MMD^2 is
    # E k(x, x') + E k(y, y') - 2 E k(x, y), each term a Gaussian integral (expected_rbf)
    shift, s, c = torch.tensor([0.5, 0.0, -0.5]), 1.5, 6.0
    zero = torch.zeros(3)
    exact = expected_rbf(zero, 2.0, c) + expected_rbf(zero, 2 * s**2, c) - 2 * expected_rbf(shift, 1 + s**2, c)
    draws = torch.stack([mmd(torch.randn(40, 3), shift + s * torch.randn(40, 3)) for _ in range(400)])
    standard_error = float(draws.std()) / math.sqrt(400)
    assert abs(float(draws.mean()) - exact) < 4 * standard_error, (float(draws.mean()), exact, standard_error)
    assert exact > 10 * standard_error  # the check can tell the discrepancy from zero


def test_info_vae_weights_its_terms_as_defined(pair):
    model, guide, x = pair

    def loss(alpha, lam):
        return value(get_objective(f"info_vae(alpha={alpha}, lam={lam})", 2), model, guide, x)

    # alpha = 0, lam = 1 drops the MMD: the ELBO with the same draws
    assert loss(0, 1) == pytest.approx(value(get_objective("trace_elbo", 2), model, guide, x), rel=1e-5)
    # the loss is R + (1 - alpha) KL + (alpha + lam - 1) N MMD on the same draws (same seed):
    # three settings give R + KL, R + N MMD and R + 2 N MMD; a fourth must follow
    elbo, one, two = loss(0, 1), loss(1, 1), loss(1, 2)
    scaled_mmd, reconstruction = two - one, 2 * one - two
    assert scaled_mmd > 0
    predicted = reconstruction + 0.5 * (elbo - reconstruction) + 1.0 * scaled_mmd
    assert loss(0.5, 1.5) == pytest.approx(predicted, rel=1e-5)
    wae = get_objective("wae_mmd(lam=2, kernel=rbf)", 2)
    assert value(wae, model, guide, x) == pytest.approx(two, rel=1e-5)


@pytest.mark.parametrize("name", MMD_BASED)
def test_mmd_objectives_refuse_a_model_without_a_proper_prior(name, digits):
    model = pg.create_model("ae", digits, latent_dim=2, hidden=(8,))
    guide = pg.create_guide("mean_field", model, hidden=(8,))
    with pytest.raises(pg.ConfigError, match=f"objective '{name}' compares q\\(z\\) with draws from the prior "
                                              f"p\\(z\\), and model 'ae' has no proper prior"):
        get_objective(name)(model, guide, digits.test[:8])


# --- FactorVAE ---------------------------------------------------------------------------------

def test_factor_vae_discriminator_estimates_a_total_correlation():
    torch.manual_seed(0)
    z = torch.randn(256, 2)
    shuffled = permute_dims(z)
    # each coordinate keeps its values, only their pairing changes
    torch.testing.assert_close(shuffled.sort(0).values, z.sort(0).values)
    assert not torch.equal(shuffled, z)
    # z2 = z1 + 0.1 eps: TC = -log(1 - rho^2) / 2 = log(101) / 2 = 2.31 nats
    objective = get_objective("factor_vae(hidden=[16, 16], lr=0.01)")
    for _ in range(150):
        a = torch.randn(128, 1)
        correlated = torch.cat([a, a + 0.1 * torch.randn(128, 1)], dim=1)
        loss = objective.discriminator_loss(correlated)  # builds the discriminator and its optimizer
        objective.optimizer.zero_grad()
        loss.backward()
        objective.optimizer.step()
    a = torch.randn(2000, 1)
    with torch.no_grad():
        logits = objective.discriminator(torch.cat([a, a + 0.1 * torch.randn(2000, 1)], dim=1))
        independent = objective.discriminator(torch.randn(2000, 2) * torch.tensor([1.0, 1.005]))
    assert 1.0 < float(logits.mean()) < 4.0, float(logits.mean())
    assert float(independent.mean()) < 0.0  # draws of prod_d q(z_d) score below zero


def test_factor_vae_is_the_elbo_with_gamma_zero_and_steps_its_discriminator(pair):
    model, guide, x = pair
    objective = get_objective("factor_vae(gamma=0)")
    assert value(objective, model, guide, x) == pytest.approx(value(get_objective("trace_elbo"), model, guide, x), rel=1e-5)
    before = [p.detach().clone() for p in objective.discriminator.parameters()]
    with torch.no_grad():
        objective(model, guide, x)
    assert all(torch.equal(a, b) for a, b in zip(before, objective.discriminator.parameters()))
    objective(model, guide, x)[0].backward()  # the discriminator's in-place step leaves the graph intact
    assert not all(torch.equal(a, b) for a, b in zip(before, objective.discriminator.parameters()))


# --- MIWAE, CIWAE, PIWAE -----------------------------------------------------------------------

def test_miwae_and_ciwae_reduce_to_iwae_and_the_elbo(pair):
    model, guide, x = pair
    iwae5, elbo5 = value(get_objective("iwae", 5), model, guide, x), value(get_objective("trace_elbo", 5), model, guide, x)
    assert value(get_objective("miwae(num_estimates=1)", 5), model, guide, x) == pytest.approx(iwae5, rel=1e-5)
    assert value(get_objective("miwae(num_estimates=5)", 1), model, guide, x) == pytest.approx(elbo5, rel=1e-5)
    assert value(get_objective("ciwae(beta=1)", 5), model, guide, x) == pytest.approx(elbo5, rel=1e-5)
    assert value(get_objective("ciwae(beta=0)", 5), model, guide, x) == pytest.approx(iwae5, rel=1e-5)
    # in between: beta ELBO + (1 - beta) IWAE on the same draws
    assert value(get_objective("ciwae(beta=0.25)", 5), model, guide, x) == pytest.approx(0.25 * elbo5 + 0.75 * iwae5, rel=1e-5)
    # MIWAE(M, K) splits the same M K draws into M groups: between ELBO_{MK} and IWAE_{MK}
    miwae = value(get_objective("miwae(num_estimates=2)", 3), model, guide, x)
    assert value(get_objective("iwae", 6), model, guide, x) <= miwae <= value(get_objective("trace_elbo", 6), model, guide, x)


def test_piwae_trains_the_model_on_iwae_and_the_guide_on_miwae(pair):
    model, guide, x = pair
    piwae = get_objective("piwae(num_estimates=2)", 3)
    assert value(piwae, model, guide, x) == pytest.approx(value(get_objective("iwae", 6), model, guide, x), rel=1e-5)
    model_grad, guide_grad = gradients(piwae, model, guide, x)
    iwae_model_grad, _ = gradients(get_objective("iwae", 6), model, guide, x)
    _, miwae_guide_grad = gradients(get_objective("miwae(num_estimates=2)", 3), model, guide, x)
    torch.testing.assert_close(model_grad, iwae_model_grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(guide_grad, miwae_guide_grad, atol=1e-4, rtol=1e-4)


# --- every objective on pairs ------------------------------------------------------------------

SMALL = {"hidden": (16,)}
SMOKE_PAIRS = {  # (model, guide): small model options
    ("vae", "mean_field"): {"latent_dim": 2, **SMALL},
    ("vae2", "mean_field"): {"latent_dims": (2, 2), "hidden": (16, 8)},  # two sites, a hierarchical prior
    ("vamp", "full_rank"): {"latent_dim": 2, "num_pseudo": 10, "encoder_hidden": (16,), **SMALL},  # learned prior
    ("cvae", "low_rank"): {"latent_dim": 2, **SMALL},  # labels fed to the model
    ("gmm", "categorical"): {},  # a discrete latent site
}


def train_or_refuse(objective: str, model_name: str, guide_name: str, data: pg.Dataset, **options) -> str:
    """Train the pair 3 steps with ``objective`` (2 particles), or check its one-line refusal."""
    torch.manual_seed(0)
    model = pg.create_model(model_name, data, **options)
    if pairing_problem(guide_name, model) is not None:
        return "no pair"
    guide = pg.create_guide(guide_name, model, **({"hidden": (16,)} if options else {}))
    try:
        result = pg.fit(model, guide, data, epochs=1, batch_size=16, objective=objective, num_particles=2,
                        progress=False)
    except pg.ConfigError as refusal:
        message = str(refusal)
        assert message.startswith(f"objective '{objective}'") and "\n" not in message, message
        return "refused"
    history = result.history[-1]
    assert math.isfinite(history["train_elbo"]) and math.isfinite(history["val_elbo"]), (model_name, guide_name)
    return "trained"


@pytest.mark.parametrize("objective", NEW)
def test_each_objective_trains_or_refuses_representative_pairs(objective, tiny):
    outcome = {pair: train_or_refuse(objective, *pair, tiny, **options) for pair, options in SMOKE_PAIRS.items()}
    expected = {pair: "trained" for pair in SMOKE_PAIRS} | {("gmm", "categorical"): "refused"}
    assert outcome == expected


@pytest.mark.slow
@pytest.mark.parametrize("objective", NEW)
def test_each_objective_trains_or_refuses_every_pair(objective, tiny):
    outcome = {
        (m, g): train_or_refuse(objective, m, g, tiny) for m in pg.list_models() for g in pg.list_guides()
    }
    assert "trained" in outcome.values()

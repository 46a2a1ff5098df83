"""beta-VAE, KL warm-up and free bits change the loss exactly as specified, for any model."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

import pyro_genmod as pg
from pyro_genmod.annealing import KLSchedule, ScaleLatents, latent_kl
from pyro_genmod.errors import ConfigError
from pyro_genmod.objectives import get_objective


def split_elbo(model, guide, x, seed):
    """The ELBO's two parts from one draw: sum log p(x|z), and sum [log q(z|x) - log p(z)]."""
    pyro.set_rng_seed(seed)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob(), guide_trace.compute_log_prob()
    latents = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
    recon = model_trace.nodes["x"]["log_prob_sum"]
    kl = sum(guide_trace.nodes[n]["log_prob_sum"] - model_trace.nodes[n]["log_prob_sum"] for n in latents)
    return float(recon.detach()), float(kl.detach())


def scheduled_loss(schedule, model, guide, x, step, seed, objective="trace_elbo"):
    pyro.set_rng_seed(seed)  # the same draw as split_elbo: Trace_ELBO runs the guide first
    return schedule(get_objective(objective), model, guide, x, step=step)


@pytest.fixture(scope="module")
def pair(digits):
    pyro.set_rng_seed(0)
    model = pg.create_model("vae2", digits, latent_dims=(5, 3), hidden=(16, 8))
    return model, pg.create_guide("bottom_up", model), digits.test[:32]


@pytest.fixture(scope="module")
def flat_pair(digits):
    pyro.set_rng_seed(0)
    model = pg.create_model("vae", digits, latent_dim=3, hidden=(16,))
    return model, pg.create_guide("mean_field", model), digits.test[:32]


@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0, 4.0])
@pytest.mark.parametrize("which", ["pair", "flat_pair"])  # two latent sites; the plain VAE
def test_beta_weights_the_kl_term(which, beta, request):
    model, guide, x = request.getfixturevalue(which)
    recon, kl = split_elbo(model, guide, x, seed=3)
    differentiable, value = scheduled_loss(KLSchedule(beta=beta), model, guide, x, step=0, seed=3)
    # loss = -E[log p(x|z)] + beta KL; float32 sums over 32 points: 1e-3 relative slack.
    assert value == pytest.approx(-recon + beta * kl, rel=1e-3, abs=1e-3)
    assert float(differentiable.detach()) == pytest.approx(value, rel=1e-5)


def test_warmup_ramps_beta_linearly(pair):
    model, guide, x = pair
    schedule = KLSchedule(beta=2.0, warmup_steps=10)
    assert [schedule.beta_at(t) for t in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    recon, kl = split_elbo(model, guide, x, seed=4)
    for step, beta in ((0, 0.0), (5, 1.0), (20, 2.0)):
        _, value = scheduled_loss(schedule, model, guide, x, step=step, seed=4)
        assert value == pytest.approx(-recon + beta * kl, rel=1e-3, abs=1e-3)


def test_free_bits_stop_the_kl_gradient_below_the_threshold(pair):
    model, guide, x = pair
    kl_sites = latent_kl(model, guide, x)
    assert set(kl_sites) == {"z1", "z2"}
    huge = 1e6  # above every site's KL: both sites count as exactly lambda
    params = list(guide.parameters())

    def grads(schedule, seed):
        differentiable, value = scheduled_loss(schedule, model, guide, x, step=0, seed=seed)
        return torch.autograd.grad(differentiable, params), value

    def after_prepass(seed):
        """RNG state after the free-bits pass's own draw, so the loss pass sees the same z."""
        pyro.set_rng_seed(seed)
        latent_kl(model, guide, x)
        return torch.get_rng_state()

    pyro.set_rng_seed(5)
    differentiable, value_free = KLSchedule(free_bits=huge)(get_objective("trace_elbo"), model, guide, x, step=0)
    free = torch.autograd.grad(differentiable, params)
    torch.set_rng_state(after_prepass(5))  # the same prepass, then the same loss draw with beta = 0
    differentiable, value_zero = KLSchedule(beta=0.0)(get_objective("trace_elbo"), model, guide, x, step=0)
    zero = torch.autograd.grad(differentiable, params)
    for a, b in zip(free, zero):
        assert torch.allclose(a, b, atol=1e-5)  # the same gradient as no KL at all
    assert value_free == pytest.approx(value_zero + 2 * huge * x.shape[0], rel=1e-6)
    # below every site's KL, free bits change nothing
    small = min(kl_sites.values()) / 100
    assert small > 0
    pyro.set_rng_seed(6)
    value_small = KLSchedule(free_bits=small)(get_objective("trace_elbo"), model, guide, x, step=0)[1]
    torch.set_rng_state(after_prepass(6))
    value_plain = get_objective("trace_elbo")(model, guide, x)[1]
    assert value_small == pytest.approx(value_plain, rel=1e-6)


def test_scale_latents_leaves_observed_sites_alone(pair):
    model, guide, x = pair
    with ScaleLatents(0.3, {"z2": 0.0}):
        trace = poutine.trace(model).get_trace(x)
    assert trace.nodes["z1"]["scale"] == pytest.approx(0.3)
    assert trace.nodes["z2"]["scale"] == 0.0
    assert trace.nodes["x"]["scale"] == 1.0


def test_applies_to_a_model_with_an_enumerated_label(digits):
    pyro.set_rng_seed(0)
    model = pg.create_model("m2", digits, latent_dim=3, hidden=(16,))
    guide = pg.create_guide("m2", model)
    x = digits.test[:16]
    values = [scheduled_loss(KLSchedule(beta=b), model, guide, x, 0, 7, "traceenum_elbo")[1] for b in (0.0, 1.0, 2.0)]
    # the loss is affine in beta for a fixed draw: equal differences
    assert values[2] - values[1] == pytest.approx(values[1] - values[0], rel=1e-3)
    assert values[1] != pytest.approx(values[0])


def test_fit_options_are_validated_and_recorded(digits):
    model = pg.create_model("vae", digits, latent_dim=2, hidden=(16,))
    guide = pg.create_guide("mean_field", model)
    with pytest.raises(ConfigError, match="beta"):
        pg.fit(model, guide, digits, epochs=1, beta=-1.0)
    with pytest.raises(ConfigError, match="kl_warmup"):
        pg.fit(model, guide, digits, epochs=1, kl_warmup=1.5)
    with pytest.raises(ConfigError, match="iwae"):
        pg.fit(model, guide, digits, epochs=1, objective="iwae", num_particles=2, beta=0.5, progress=False)
    result = pg.fit(model, guide, digits, epochs=2, beta=0.5, kl_warmup=1, free_bits=0.1, progress=False)
    assert result.options["beta"] == 0.5 and result.options["kl_warmup"] == 1
    # the train objective is the reweighted one, the validation ELBO the true one: beta < 1
    # weighs the KL less, so the train "ELBO" sits above an ELBO on similar data.
    assert result.history[-1]["train_elbo"] > result.history[-1]["val_elbo"] - 5

"""The diffusion model as a latent-variable model: its forward-process guide, the diffusion ELBO,
scoring, sampling, encoding and kill-and-resume.

T = 4 here (T = 1 for the reduction to a VAE): the chain's algebra is the same at any T, and four
steps keep a trained model and K = 200 importance-sampled chains to seconds on 2 cores.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from pyro import poutine
from pyro_genmod.models.diffusion import noise_schedule
from safetensors.torch import load_file
from test_resume import _history, _run_jobs

import pyro_genmod as pg
from pyro_genmod.errors import ConfigError
from pyro_genmod.factories import fitting_guides, pairing_problem
from pyro_genmod.importance import log_importance_weights
from pyro_genmod.objectives.diffusion_elbo import UNIFORM_SHARE, diffusion_terms, step_proposal

T = 4
OPTIONS = {"num_steps": T, "hidden": [128, 128]}


@pytest.fixture(scope="module")
def trained(digits):
    """A T = 4 diffusion model trained for 20 epochs with its default objective (diffusion_elbo)."""
    torch.manual_seed(0)
    model = pg.create_model("diffusion", digits, **OPTIONS)
    guide = pg.create_guide("forward_process", model)
    result = pg.fit(model, guide, digits, epochs=20, seed=0, progress=False)
    assert result.options["objective"] == "diffusion_elbo"  # the model's default objective
    return model, guide


def test_sites_schedules_and_pairs(digits):
    model = pg.create_model("diffusion", digits, **OPTIONS)
    assert [s.name for s in model.latent_sites] == ["x_1", "x_2", "x_3", "x_4"]
    assert all(s.event_shape == (1, 8, 8) and not s.discrete for s in model.latent_sites)
    # the declaration matches a trace of the program: x_T first, then down to x_1, then x
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(num_samples=3)
    sampled = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name.startswith("x")]
    assert sampled == ["x_4", "x_3", "x_2", "x_1", "x"]
    for kind in ("cosine", "linear"):
        for steps in (1, 4, 1000):
            betas = noise_schedule(kind, steps)
            alpha_bar = torch.cumprod(1 - betas, 0)
            assert betas.shape == (steps,) and bool((betas > 0).all() and (betas <= 0.999).all())
            assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
            assert alpha_bar[-1] < 0.01 or (kind, steps) == ("linear", 1)  # ends near pure noise
    # the conv denoiser and the other likelihoods: a finite bound, samples of the data's shape
    for options in ({"denoiser": "conv", "channels": 8}, {"likelihood": "gaussian"}, {"likelihood": "discretized_logistic"}):
        other = pg.create_model("diffusion", digits, num_steps=2, hidden=[16], **options)
        with torch.no_grad():
            assert torch.isfinite(diffusion_terms(other, digits.test[:8])["total"]).all(), options
        assert pg.sample(other, 3, seed=0).shape == (3, 1, 8, 8)
    # registry metadata: the forward process (and the prior, as the IS baseline) only
    assert fitting_guides(model) == ["forward_process", "prior"]
    with pytest.raises(pg.PairingError, match="forward_process"):
        pg.create_guide("mean_field", model)
    vae = pg.create_model("vae", digits)
    assert "forward_process" not in fitting_guides(vae) and "forward noising" in pairing_problem("forward_process", vae)
    guide = pg.create_guide("forward_process", model)
    assert sum(p.numel() for p in guide.parameters()) == 0  # fixed: nothing to train
    with pytest.raises(pg.ConfigError, match="forward-process guide"):
        pg.fit(model, pg.create_guide("prior", model), digits, epochs=1, objective="diffusion_elbo", progress=False)


def test_one_step_is_a_vae_with_a_fixed_encoder(digits):
    """T = 1: x_1 ~ N(0, I), x ~ p(x | x_1), q(x_1 | x) = N(sqrt(ab) (2x - 1), (1 - ab) I) with the
    linear schedule's alpha_bar_1 = 1 - 1000 * 1e-4 written out here; the ELBO per draw, the
    closed-form ELBO of diffusion_elbo, and the engine's IS weights agree with this direct
    computation."""
    torch.manual_seed(0)
    model = pg.create_model("diffusion", digits, num_steps=1, schedule="linear", hidden=[32])
    guide = pg.create_guide("forward_process", model)
    x = digits.test[:50]
    ab = 1 - 0.1
    loc, scale = math.sqrt(ab) * (2 * x - 1), math.sqrt(1 - ab)

    def decoder_log_prob(x_1):
        logits = model.denoiser(x_1.reshape(-1, 1, 8, 8), torch.ones(x_1.reshape(-1, 64).shape[0], dtype=torch.long),
                                "decoder").reshape(*x_1.shape[:-3], 64)
        return torch.distributions.Bernoulli(logits=logits).log_prob(x.reshape(-1, 64).expand_as(logits)).sum(-1)

    with torch.no_grad():
        # the same draw through Pyro's own trace machinery and through the direct formula
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        model_trace.compute_log_prob(), guide_trace.compute_log_prob()
        x_1 = guide_trace.nodes["x_1"]["value"]
        pyro_log_w = model_trace.nodes["x"]["log_prob"] + model_trace.nodes["x_1"]["log_prob"] - guide_trace.nodes["x_1"]["log_prob"]
        normal = torch.distributions.Normal
        direct = decoder_log_prob(x_1) + normal(0.0, 1.0).log_prob(x_1).sum((-3, -2, -1)) - normal(loc, scale).log_prob(
            x_1).sum((-3, -2, -1))
        torch.testing.assert_close(pyro_log_w, direct, rtol=1e-5, atol=1e-3)
        # closed form: E_q log p(x | x_1) - KL(q(x_1 | x) || N(0, I)); its KL part is exact
        kl = (0.5 * (loc.square() + scale**2 - 1) - math.log(scale)).sum((-3, -2, -1))
        terms = diffusion_terms(model, x)
        torch.testing.assert_close(terms["prior"], kl, rtol=1e-5, atol=1e-4)
        assert bool((terms["step"] == 0).all())
        # the engine's IS weights average to the same ELBO (independent draws, within 4 s.e.)
        torch.manual_seed(1)
        log_w = log_importance_weights(model, guide, x, 400)
        eps = torch.randn(400, *x.shape)
        reference = decoder_log_prob(loc + scale * eps) - kl
    difference = log_w.mean(0) - reference.mean(0)
    stderr = (log_w.var(0) / 400 + reference.var(0) / 400).sqrt()
    assert bool((difference.abs() < 4 * stderr + 1e-4).all()), (difference / stderr).abs().max()


def test_diffusion_elbo_is_unbiased_for_the_full_chain_elbo_at_two_network_calls(trained, digits):
    """Both ways of drawing the step t (uniform, and the default importance sampling from the
    proposal the training run left in the model) estimate the full-chain ELBO without bias; the
    importance-sampled one has a far lower variance than the uniform one."""
    model, guide = trained
    x = digits.test[:60]
    draws = 200
    proposal = step_proposal(model)  # 20 epochs of training filled the model's loss history
    assert proposal is not None and proposal.shape == (T - 1,)
    assert abs(float(proposal.sum()) - 1) < 1e-5 and float(proposal.min()) >= UNIFORM_SHARE / (T - 1) - 1e-7
    with torch.no_grad():
        torch.manual_seed(1)
        chain = log_importance_weights(model, guide, x, draws)  # full-chain single-draw ELBOs, (draws, N)
        uniform = -torch.stack([diffusion_terms(model, x)["total"] for _ in range(draws)])
        weighted = -torch.stack([diffusion_terms(model, x, proposal)["total"] for _ in range(draws)])
    for one_step in (uniform, weighted):
        # equal in expectation: the mean over draws and points, within 4 standard errors
        stderr = math.sqrt(chain.var(0).mean() / (draws * 60) + one_step.var(0).mean() / (draws * 60))
        assert abs(float(chain.mean() - one_step.mean())) < 4 * stderr
        # and per point (a looser, per-point check against a wrong t-weighting for some points)
        per_point = (chain.mean(0) - one_step.mean(0)) / (chain.var(0) / draws + one_step.var(0) / draws).sqrt()
        assert float(per_point.abs().max()) < 5
    # the variance: the step losses differ by an order of magnitude between steps, which a uniform
    # t pays and the proposal does not (measured at this seed: 1129 against 39 per point; the full
    # chain 32). The bound of 1/5 leaves room: a sample variance from 200 draws is within about
    # 10% (plus the heavy tail) of its expectation.
    assert float(weighted.var(0).mean()) < float(uniform.var(0).mean()) / 5
    assert float(weighted.sum(1).var()) < float(uniform.sum(1).var())
    # against the full chain at equal cost: T / 2 draws of diffusion_elbo (2 denoiser passes each)
    # cost the T passes of one chain draw, and their mean has the lower variance (measured at this
    # seed: 39 / 2 = 19 against 32 per point). One draw each is not asserted: 39 against 32.
    assert float(weighted.var(0).mean()) / (T / 2) < float(chain.var(0).mean())
    # the estimator's cost: 2 denoiser passes per point whatever T (the full chain: T)
    rows = []
    hook = model.denoiser.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    trace_elbo = pg.objectives.get_objective("trace_elbo")
    try:
        with torch.no_grad():
            pg.objectives.get_objective("diffusion_elbo")(model, guide, x)
            one = sum(rows)
            trace_elbo(model, guide, x)  # its first call also probes its fast path on one point
            rows.clear()
            trace_elbo(model, guide, x)
            full = sum(rows)
    finally:
        hook.remove()
    assert (one, full) == (2 * 60, T * 60)


def test_t_sampling_option_and_the_warm_up(digits):
    with pytest.raises(ConfigError, match="t_sampling"):
        pg.objectives.get_objective("diffusion_elbo(t_sampling=sobol)")
    torch.manual_seed(0)
    model = pg.create_model("diffusion", digits, num_steps=T, hidden=[16])
    guide = pg.create_guide("forward_process", model)
    assert step_proposal(model) is None  # no loss history yet: uniform
    assert set(model.state_dict()) >= {"step_loss_sq", "step_loss_seen"}  # checkpoints carry the history
    pg.fit(model, guide, digits, epochs=1, batch_size=256, seed=0, progress=False)
    assert bool((model.step_loss_seen >= 5).all())  # every step drawn in every batch of the uniform warm-up
    uniform = pg.create_model("diffusion", digits, num_steps=T, hidden=[16])
    pg.fit(uniform, pg.create_guide("forward_process", uniform), digits, epochs=1, batch_size=256, seed=0,
           objective="diffusion_elbo(t_sampling=uniform)", progress=False)
    assert bool((uniform.step_loss_seen == 0).all()) and step_proposal(uniform) is None  # no history kept


def test_importance_sampling_is_at_least_the_elbo_on_held_out_data(trained, digits):
    model, guide = trained
    x = digits.test[:100]
    ll = pg.log_likelihood(model, guide, x, 200, seed=0)
    assert ll.per_point.shape == (100,) and torch.isfinite(ll.per_point).all() and ll.khat.shape == (100,)
    with torch.no_grad():
        torch.manual_seed(2)
        elbo = -torch.stack([diffusion_terms(model, x)["total"] for _ in range(50)]).mean(0)  # independent draws
    gap = ll.per_point - elbo
    assert float(gap.mean()) > -3 * float(gap.std() / math.sqrt(100))
    # the ELBO the scorer reports is the full-chain bound and agrees with diffusion_elbo's
    assert abs(ll.elbo_mean - float(elbo.mean())) < 4 * float((ll.elbo - elbo).std() / math.sqrt(100)) + 0.5
    assert ll.mean > ll.elbo_mean  # log-mean-exp over the same K draws
    # and training worked: better than the untrained model by a wide margin
    torch.manual_seed(0)
    fresh = pg.create_model("diffusion", digits, **OPTIONS)
    untrained = pg.log_likelihood(fresh, pg.create_guide("forward_process", fresh), x, 20, seed=0, khat=False)
    assert ll.mean > untrained.mean + 20


def test_sampling_encoding_and_full_chain_training(trained, digits):
    model, guide = trained
    x = pg.sample(model, 16, seed=0)
    assert x.shape == (16, 1, 8, 8) and bool(((x == 0) | (x == 1)).all())
    mean = pg.sample(model, 16, mean=True, seed=0)
    assert mean.shape == (16, 1, 8, 8) and bool(((mean >= 0) & (mean <= 1)).all())
    z = pg.encode(guide, digits.test[:5])
    assert z.shape == (5, 64) and torch.isfinite(z).all()
    torch.testing.assert_close(z, pg.encode(guide, digits.test[:5]))  # deterministic (DDIM latent)
    torch.testing.assert_close(z[:2], pg.encode(guide, digits.test[:2]))  # per point
    # plain trace_elbo trains the full chain of T sites too
    torch.manual_seed(0)
    fresh = pg.create_model("diffusion", digits, **OPTIONS)
    forward = pg.create_guide("forward_process", fresh)
    before = pg.train.evaluate_elbo(fresh, forward, digits.val)
    result = pg.fit(fresh, forward, digits, epochs=3, objective="trace_elbo", seed=0, progress=False)
    assert result.options["objective"] == "trace_elbo" and result.history[-1]["val_elbo"] > before + 20


def test_cli_kill_and_resume_is_bitwise_exact(tmp_path):
    """genmod train --model diffusion (default guide forward_process, default objective
    diffusion_elbo): killed between steps and while checkpointing, resumed, equal bit for bit."""
    args = [
        "train", "--model", "diffusion", "--model-opt", f"num_steps={T}", "--model-opt", "hidden=[16]",
        "--epochs", "2", "--batch-size", "256", "--seed", "5", "-K", "20", "--checkpoint-every", "4", "--quiet",
    ]
    ref, run = tmp_path / "reference", tmp_path / "interrupted"
    resume = ["train", "--resume", str(run), "--quiet"]
    results = _run_jobs(tmp_path, [
        {"argv": [*args, "--out", str(ref)], "kill": "none", "folder": str(ref)},
        {"argv": [*args, "--out", str(run)], "kill": "step", "n": 8, "folder": str(run)},  # epoch 2, step 2
        {"argv": resume, "kill": "checkpoint_half", "n": 1, "folder": str(run)},
        {"argv": resume, "kill": "none", "folder": str(run)},
    ])
    assert [r["killed"] for r in results] == [False, True, True, False], results
    expected, got = load_file(str(ref / "params.safetensors")), load_file(str(run / "params.safetensors"))
    assert expected.keys() == got.keys() and any("denoiser" in name for name in expected)
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after kill/resume"
    assert _history(ref) == _history(run)
    metrics = [json.loads((f / "metrics.json").read_text()) for f in (ref, run)]
    for m in metrics:
        m.pop("train_seconds")
    assert metrics[0] == metrics[1]
    config = json.loads((ref / "config.json").read_text())
    assert config["guide"]["name"] == "forward_process" and config["training"]["objective"] == "diffusion_elbo"
    # genmod sample writes an image grid of new digits
    from pyro_genmod.cli import main

    assert main(["sample", str(ref), "-n", "16", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # image data: bits per dimension beside nats
    m = metrics[0]
    assert m["test_bits_per_dim"] == pytest.approx(-m["test_log_likelihood"] / (64 * math.log(2)))
    assert m["test_elbo_bits_per_dim"] == pytest.approx(-m["test_elbo"] / (64 * math.log(2)))

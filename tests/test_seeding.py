"""seed=None draws fresh noise; an integer seed reproduces and leaves the global generator alone."""

from __future__ import annotations

import torch

import pyro_genmod as pg


def test_seed_none_draws_fresh_noise_and_a_seed_reproduces_without_touching_the_global_rng(trained_vae, digits):
    model, guide = trained_vae
    x = digits.test[:20]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = pg.log_likelihood(model, guide, x, 50, seed=7, khat=False).per_point
    b = pg.log_likelihood(model, guide, x, 50, seed=7, khat=False).per_point
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    c = pg.log_likelihood(model, guide, x, 50, khat=False).per_point
    d = pg.log_likelihood(model, guide, x, 50, khat=False).per_point
    assert not torch.equal(c, d), "two unseeded estimates must use different draws"
    assert not torch.equal(torch.get_rng_state(), state), "seed=None draws from the global generator"
    s1, s2 = pg.sample(model, 4, seed=1), pg.sample(model, 4, seed=1)
    assert torch.equal(s1, s2)
    assert not torch.equal(pg.sample(model, 4), pg.sample(model, 4))

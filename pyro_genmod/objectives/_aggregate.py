"""Terms of the aggregate posterior q(z) = E_x q(z|x), shared by the latent regularizers.

``beta_tcvae``, ``factor_vae``, ``info_vae`` and ``wae_mmd`` add to the ELBO a term that looks
at the draws of a whole minibatch at once (a total correlation, or a divergence between q(z)
and p(z)). Every latent site is flattened and the sites are joined into one vector per draw,
in the model's site order. The log-densities come from the density engine
(:func:`~pyro_genmod.densities.score_program`), so these objectives score a pair exactly as
``trace_elbo`` does.
"""

from __future__ import annotations

from math import prod
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from torch import Tensor

from pyro_genmod.densities import score_program
from pyro_genmod.errors import ConfigError

from .base import check_reparameterizable, latent_model

__all__ = ["KERNELS", "Draws", "flat_latents", "latent_model", "mmd", "prior_draws", "score_model", "scored_draws"]

KERNELS = ("rbf", "imq")


class Draws(NamedTuple):
    """K draws per point from q(z|x), flattened and joined: ``z`` of shape ``(K, N, D)``; and
    per draw ``(K, N)``: log q(z|x), log p(z) (every latent site) and log p(x|z) (the rest)."""

    z: Tensor
    log_q: Tensor
    log_prior: Tensor
    log_likelihood: Tensor

    @property
    def negative_elbo(self) -> Tensor:
        """-(log p(x|z) + log p(z) - log q(z|x)) summed over the points, averaged over draws."""
        return -(self.log_likelihood + self.log_prior - self.log_q).sum() / self.z.shape[0]


def flat_latents(model, values: dict[str, Tensor], shape: tuple[int, ...]) -> Tensor:
    """The latent sites' ``values`` flattened and joined, shape ``(*shape, D)`` (``shape`` is the
    draws' batch: ``(K, N)`` or ``(n,)``)."""
    parts = []
    for site in model.latent_sites:
        value = values[site.name]
        flat = value.reshape(value.shape[: value.dim() - len(site.event_shape)] + (prod(site.event_shape),))
        parts.append(flat.expand(*shape, flat.shape[-1]))
    return torch.cat(parts, dim=-1)


def _particles(model, num: int):
    return pyro.plate("particles", num, dim=-(model.max_plate_nesting + 1))


def score_model(model, x: Tensor, values: dict[str, Tensor], num: int) -> tuple[Tensor, Tensor]:
    """``(log p(z), log p(x|z))`` per draw, shape ``(K, N)``, with the latent sites set to
    ``values`` (K draws per point)."""
    with pyro.validation_enabled(False), _particles(model, num):
        p = score_program(model, x, replay=values, per_point=True, keep_sites=True)
    shape = (num, x.shape[0])
    log_prior = sum(p.sites[name].expand(shape) for name in values)
    return log_prior, torch.as_tensor(p.total).expand(shape) - log_prior


def scored_draws(model, guide, x: Tensor, num: int, name: str) -> Draws:
    """K = ``num`` reparameterized draws per point from the guide, scored by the model."""
    inner = latent_model(model, name)
    check_reparameterizable(inner, name)
    with pyro.validation_enabled(False), _particles(inner, num):
        q = score_program(guide, x, reparameterized=True, per_point=True)
    shape = (num, x.shape[0])
    log_prior, log_likelihood = score_model(model, x, q.values, num)
    z = flat_latents(inner, q.values, shape)
    return Draws(z, torch.as_tensor(q.total).expand(shape), log_prior, log_likelihood)


def prior_draws(model, num: int, name: str) -> Tensor:
    """``num`` draws from the model's prior p(z), flattened and joined, shape ``(num, D)``."""
    inner = latent_model(model, name)
    if not getattr(inner, "has_log_likelihood", True) or not callable(getattr(inner, "prior", None)):
        model_name = getattr(inner, "registry_name", type(inner).__name__)
        raise ConfigError(
            f"objective '{name}' compares q(z) with draws from the prior p(z), and model "
            f"'{model_name}' has no proper prior to draw from; use trace_elbo with it, or a model "
            f"with a prior (vae, vae2, vamp, flow_prior, ...)"
        )
    with poutine.block(), pyro.validation_enabled(False), pyro.plate(getattr(inner, "data_plate", "data"), num):
        values = inner.prior()
    return flat_latents(inner, values, (num,))


def _kernel(a: Tensor, b: Tensor, kernel: str, scale: float) -> Tensor:
    """k(a_i, b_j) for all pairs; C = 2 D scale^2 (Tolstikhin et al.'s choice for a prior of
    standard deviation ``scale``): RBF exp(-|a - b|^2 / C), IMQ C / (C + |a - b|^2)."""
    c = 2.0 * a.shape[-1] * scale**2
    squared = (a.square().sum(-1, keepdim=True) - 2 * a @ b.T + b.square().sum(-1)).clamp_min(0.0)
    return torch.exp(-squared / c) if kernel == "rbf" else c / (c + squared)


def mmd(a: Tensor, b: Tensor, kernel: str = "rbf", scale: float = 1.0, unbiased: bool = True) -> Tensor:
    r"""The squared maximum mean discrepancy between the samples ``a`` (n, D) and ``b`` (m, D).

    Unbiased (the U-statistic, without the i = j terms inside each sample):
    sum_{i!=j} k(a_i, a_j) / n(n-1) + sum_{i!=j} k(b_i, b_j) / m(m-1) - 2 mean k(a_i, b_j).
    Biased (``unbiased=False``, the V-statistic): the MMD^2 between the two empirical
    distributions, >= 0 and exactly 0 when the samples are the same.

    References:
        | A Kernel Two-Sample Test (Gretton et al., 2012) https://jmlr.org/papers/v13/gretton12a.html
    """
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    k_aa, k_bb, k_ab = _kernel(a, a, kernel, scale), _kernel(b, b, kernel, scale), _kernel(a, b, kernel, scale)
    if not unbiased:
        return k_aa.mean() + k_bb.mean() - 2 * k_ab.mean()
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ConfigError("the unbiased MMD needs at least two draws on each side (a batch of at least 2)")
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return within_a + within_b - 2 * k_ab.mean()

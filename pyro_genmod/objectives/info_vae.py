"""InfoVAE / MMD-VAE: the ELBO with part of its KL term traded for an MMD between q(z) and p(z)."""

from __future__ import annotations

import math

from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.errors import ConfigError

from ._aggregate import KERNELS, mmd, prior_draws, scored_draws
from .base import LossPair, Objective

__all__ = ["InfoVAE"]


def _check(name: str, key: str, value: float, low: float = 0.0) -> float:
    if not math.isfinite(value) or value < low:
        bound = "" if low == -math.inf else f" and >= {low:g}"
        raise ConfigError(f"objective '{name}' option '{key}' must be finite{bound}, got {value}")
    return float(value)


@register_objective("info_vae")
class InfoVAE(Objective):
    r"""InfoVAE: -E[log p(x|z)] + (1 - alpha) KL(q(z|x) || p(z)) + (alpha + lam - 1) MMD(q(z), p(z))
    (Zhao, Song & Ermon, 2019); alpha = 1 is the MMD-VAE.

    The KL term is the ELBO's, on the same draws; MMD^2 is the unbiased estimate between the
    batch's draws from q(z|x) (the aggregate posterior q(z)) and as many draws from the model's
    prior (:func:`~pyro_genmod.objectives._aggregate.mmd`), counted once per point of the batch
    like the other terms. The loss value is this objective summed over the batch: a bound on
    log p(x) only when alpha = 0 and lam = 1 (the ELBO). A learned prior without
    reparameterized samples (``vamp``) is trained by the KL term only.

    Pairs: every latent site continuous and reparameterized, and a model with a proper prior
    to draw from (not ``ae``).

    References:
        | InfoVAE: Balancing Learning and Inference in Variational Autoencoders (Zhao, Song &
          Ermon, 2019) https://arxiv.org/abs/1706.02262

    Arguments:
        num_particles: draws per point.
        alpha: in InfoVAE's weights above; 1 drops the KL term.
        lam: lambda, the weight of the divergence between q(z) and p(z).
        kernel: ``"rbf"`` exp(-|a - b|^2 / C) or ``"imq"`` C / (C + |a - b|^2), C = 2 D scale^2.
        kernel_scale: the kernel's length scale, in units of the prior's standard deviation.

    The defaults (alpha 0, lam 10, RBF) are a starting point, not values tuned in the paper.
    """

    def __init__(self, num_particles: int = 1, alpha: float = 0.0, lam: float = 10.0, kernel: str = "rbf",
                 kernel_scale: float = 1.0):
        super().__init__(num_particles)
        name = self.registry_name
        self.alpha = _check(name, "alpha", alpha, low=-math.inf)
        self.lam = _check(name, "lam", lam)
        if kernel not in KERNELS:
            raise ConfigError(f"objective '{name}' option 'kernel' must be one of {list(KERNELS)}, got {kernel!r}")
        self.kernel = kernel
        self.kernel_scale = _check(name, "kernel_scale", kernel_scale)
        if self.kernel_scale == 0:
            raise ConfigError(f"objective '{name}' option 'kernel_scale' must be positive, got 0")

    def divergence(self, model, z: Tensor) -> Tensor:
        """MMD^2 between the draws ``z`` (K, N, D) and as many draws from the prior."""
        flat = z.reshape(-1, z.shape[-1])
        return mmd(flat, prior_draws(model, flat.shape[0], self.name), self.kernel, self.kernel_scale)

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        draws = scored_draws(model, guide, x, self.num_particles, self.name)
        kl = (draws.log_q - draws.log_prior).sum() / self.num_particles
        reconstruction = -draws.log_likelihood.sum() / self.num_particles
        weight = self.alpha + self.lam - 1.0
        loss = reconstruction + (1.0 - self.alpha) * kl
        if weight != 0.0:
            loss = loss + weight * x.shape[0] * self.divergence(model, draws.z)
        return loss, float(loss.detach())

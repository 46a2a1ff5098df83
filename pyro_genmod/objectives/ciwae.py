"""CIWAE: a convex combination of the ELBO and the IWAE bound on the same particles."""

from __future__ import annotations

import math

from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.errors import ConfigError

from .base import LossPair, Objective, check_reparameterizable
from .iwae import importance_bound, log_weights

__all__ = ["CIWAE"]


@register_objective("ciwae")
class CIWAE(Objective):
    r"""CIWAE: beta ELBO_K + (1 - beta) IWAE_K on the same K = ``num_particles`` draws
    (Rainforth et al., 2018), with ELBO_K = (1/K) sum_k log w_k.

    beta = 1 is the ELBO with K particles, beta = 0 the IWAE bound; in between, the guide
    gradient keeps part of the ELBO's signal-to-noise ratio while the model trains on a
    tighter bound than the ELBO.

    References:
        | Tighter Variational Bounds are Not Necessarily Better (Rainforth, Kosiorek, Le,
          Maddison, Igl, Wood & Teh, 2018) https://arxiv.org/abs/1802.04537

    Arguments:
        num_particles: K, the particles per point.
        beta: the ELBO's weight, in [0, 1].
    """

    def __init__(self, num_particles: int = 1, beta: float = 0.5):
        super().__init__(num_particles)
        if not (math.isfinite(beta) and 0.0 <= beta <= 1.0):
            raise ConfigError(f"objective 'ciwae' option 'beta' must lie in [0, 1], got {beta}")
        self.beta = float(beta)

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        check_reparameterizable(model, self.name)
        log_w = log_weights(model, guide, x, self.num_particles)
        loss = -(self.beta * log_w.mean(0) + (1 - self.beta) * importance_bound(log_w)).sum()
        return loss, float(loss.detach())

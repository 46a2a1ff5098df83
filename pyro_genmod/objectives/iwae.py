"""The importance-weighted bound (IWAE), vectorized and differentiable."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.densities import log_densities

from .base import LossPair, Objective, check_reparameterizable

__all__ = ["IWAE"]


@register_objective("iwae")
class IWAE(Objective):
    """The importance-weighted bound with K = ``num_particles`` (Burda et al., 2015).

    log (1/K) sum_k w_k with the K particles as a plate dimension; K = 1 is the ELBO. Unlike
    Pyro's ``RenyiELBO(alpha=0)`` it is differentiable and vectorized.
    """


    def __call__(self, model, guide, x: Tensor) -> LossPair:
        check_reparameterizable(model, self.name)
        log_p, log_q = log_densities(model, guide, x, self.num_particles, per_point=True)
        log_w = (log_p - log_q).expand(self.num_particles, x.shape[0])
        loss = -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()
        return loss, float(loss.detach())

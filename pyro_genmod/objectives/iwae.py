"""The importance-weighted bound (IWAE), vectorized and differentiable."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.densities import log_densities

from .base import LossPair, Objective, check_reparameterizable

__all__ = ["IWAE", "importance_bound", "log_weights"]


def log_weights(model, guide, x: Tensor, num_particles: int) -> Tensor:
    """log w_k = log p(x, z_k) - log q(z_k | x) for K = ``num_particles`` draws per point, shape
    ``(K, N)``, differentiable (the bounds of ``iwae``, ``miwae``, ``ciwae`` are functions of it)."""
    log_p, log_q = log_densities(model, guide, x, num_particles, per_point=True)
    return (log_p - log_q).expand(num_particles, x.shape[0])


def importance_bound(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/K) sum_k w_k over ``dim`` (of size K): the importance-weighted bound per point."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


@register_objective("iwae")
class IWAE(Objective):
    """The importance-weighted bound with K = ``num_particles`` (Burda et al., 2015).

    log (1/K) sum_k w_k with the K particles as a plate dimension; K = 1 is the ELBO. Unlike
    Pyro's ``RenyiELBO(alpha=0)`` it is differentiable and vectorized.
    """


    def __call__(self, model, guide, x: Tensor) -> LossPair:
        check_reparameterizable(model, self.name)
        loss = -importance_bound(log_weights(model, guide, x, self.num_particles)).sum()
        return loss, float(loss.detach())

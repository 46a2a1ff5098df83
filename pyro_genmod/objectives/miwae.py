"""MIWAE: the mean of M importance-weighted bounds of K particles each."""

from __future__ import annotations

from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.errors import ConfigError

from .base import LossPair, Objective, check_reparameterizable
from .iwae import importance_bound, log_weights

__all__ = ["MIWAE"]


def check_estimates(name: str, num_estimates) -> int:
    if isinstance(num_estimates, bool) or not isinstance(num_estimates, int) or num_estimates < 1:
        raise ConfigError(f"objective '{name}' option 'num_estimates' (M) must be a positive integer, got {num_estimates!r}")
    return num_estimates


@register_objective("miwae")
class MIWAE(Objective):
    r"""MIWAE: (1/M) sum_m log (1/K) sum_k w_mk, M IWAE bounds of K = ``num_particles`` each
    (Rainforth et al., 2018).

    The M x K draws cost as much as IWAE with M K particles; the bound is looser than that
    one, and the guide gradient's signal-to-noise ratio grows with M (the IWAE guide
    gradient's shrinks with K). M = 1 is ``iwae``; K = 1 is the ELBO with M particles.

    References:
        | Tighter Variational Bounds are Not Necessarily Better (Rainforth, Kosiorek, Le,
          Maddison, Igl, Wood & Teh, 2018) https://arxiv.org/abs/1802.04537

    Arguments:
        num_particles: K, the particles inside each importance-weighted bound.
        num_estimates: M, the number of bounds averaged.
    """

    def __init__(self, num_particles: int = 1, num_estimates: int = 8):
        super().__init__(num_particles)
        self.num_estimates = check_estimates(self.registry_name, num_estimates)

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        check_reparameterizable(model, self.name)
        m, k = self.num_estimates, self.num_particles
        log_w = log_weights(model, guide, x, m * k).reshape(m, k, x.shape[0])
        loss = -importance_bound(log_w, dim=1).mean(0).sum()
        return loss, float(loss.detach())

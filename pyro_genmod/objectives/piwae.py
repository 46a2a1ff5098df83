"""PIWAE: the model trained on IWAE with M K particles, the guide on MIWAE(M, K), same draws."""

from __future__ import annotations

import pyro
import torch
from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.densities import score_program

from .base import LossPair, Objective, check_reparameterizable
from .iwae import importance_bound
from .miwae import check_estimates

__all__ = ["PIWAE"]


@register_objective("piwae")
class PIWAE(Objective):
    r"""PIWAE: the generative model follows the IWAE bound with M K draws, the guide follows
    MIWAE(M, K) on the same draws (Rainforth et al., 2018).

    One loss cannot give each network its own target, so the surrogate is built for the
    gradients: -MIWAE(log w) - sum_k (a_k - b_k) log p(x, z_k) with the draws z_k held fixed in
    the second term, where a_k are the normalized weights over all M K draws and b_k = w~_k / M
    those within each group of K. The model's gradient is then sum_k a_k d log p(x, z_k), the
    IWAE_{MK} one, and the guide's is MIWAE's (the second term does not reach it). The model is
    scored twice (with and without the draws' gradient), so a step costs about twice ``iwae``'s
    with M K particles. The loss value is -IWAE_{MK}, the bound the model follows.

    References:
        | Tighter Variational Bounds are Not Necessarily Better (Rainforth, Kosiorek, Le,
          Maddison, Igl, Wood & Teh, 2018) https://arxiv.org/abs/1802.04537

    Arguments:
        num_particles: K, the particles inside each of the guide's bounds.
        num_estimates: M, the number of bounds the guide's target averages.
    """

    def __init__(self, num_particles: int = 1, num_estimates: int = 8):
        super().__init__(num_particles)
        self.num_estimates = check_estimates(self.registry_name, num_estimates)

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        check_reparameterizable(model, self.name)
        m, k, n = self.num_estimates, self.num_particles, x.shape[0]
        with pyro.validation_enabled(False), pyro.plate("particles", m * k, dim=-(model.max_plate_nesting + 1)):
            q = score_program(guide, x, per_point=True)
            p = score_program(model, x, replay=q.values, per_point=True)
            fixed = score_program(model, x, replay={s: v.detach() for s, v in q.values.items()}, per_point=True)
        log_w = (p.total - q.total).expand(m * k, n)
        within = importance_bound(log_w.reshape(m, k, n), dim=1).mean(0)  # MIWAE per point
        a = torch.softmax(log_w.detach(), dim=0)
        b = torch.softmax(log_w.detach().reshape(m, k, n), dim=1).reshape(m * k, n) / m
        surrogate = -within.sum() - ((a - b) * torch.as_tensor(fixed.total).expand(m * k, n)).sum()
        loss = -importance_bound(log_w.detach()).sum()
        return surrogate, float(loss)

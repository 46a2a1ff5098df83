"""IWAE with the doubly reparameterized guide gradient (DReG)."""

from __future__ import annotations

import math

import pyro
import torch
from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.densities import score_program
from pyro_genmod.errors import ConfigError

from .base import LossPair, Objective, check_reparameterizable

__all__ = ["DReGIWAE"]


@register_objective("iwae_dreg")
class DReGIWAE(Objective):
    """The IWAE bound with the doubly reparameterized guide gradient (Tucker et al., 2018).

    With w_k = p(x, z_k) / q(z_k|x), z_k = z(eps_k; phi) and normalized weights w~_k, the guide
    gradient is sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi), where log q is evaluated with
    its parameters held fixed. It has the same expectation as the IWAE gradient, and its
    variance does not grow with K, while the IWAE guide gradient's signal-to-noise ratio
    vanishes as K grows (Rainforth et al., 2018). The model gradient is IWAE's.

    Implementation: the guide is re-scored at its own draws with detached parameters
    (``torch.func.functional_call``); the draws enter that re-scoring and the model through
    a view whose gradient hook multiplies by w~_k, and the surrogate is -sum_k w~_k log w_k.
    Flows that cannot score points they did not draw (planar, radial, Sylvester) cannot be
    re-scored; use ``iwae`` with them.

    References:
        | Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives
          (Tucker, Lawson, Gu & Maddison, 2018) https://arxiv.org/abs/1810.04152
        | Tighter Variational Bounds are Not Necessarily Better (Rainforth et al., 2018)
          https://arxiv.org/abs/1802.04537
    """


    def __call__(self, model, guide, x: Tensor) -> LossPair:
        check_reparameterizable(model, self.name)
        if getattr(guide, "scores_own_samples_only", False) or getattr(guide, "is_point_estimate", False):
            guide_name = getattr(guide, "registry_name", type(guide).__name__)
            raise ConfigError(
                f"objective 'iwae_dreg' re-scores the guide's draws with its parameters held "
                f"fixed, which guide '{guide_name}' cannot do; use objective='iwae'"
            )
        num, particle_dim = self.num_particles, -(model.max_plate_nesting + 1)
        frozen = {name: p.detach() for name, p in guide.named_parameters()}

        def frozen_guide(data: Tensor):
            return torch.func.functional_call(guide, frozen, (data,))

        with pyro.plate("particles", num, dim=particle_dim):
            drawn = score_program(guide, x).values
            draws = {name: value.view_as(value) for name, value in drawn.items()}  # new tensors: flow caches must miss
            log_q = score_program(frozen_guide, x, replay=draws, per_point=True, strict=True).total
            log_p = score_program(model, x, replay=draws, per_point=True).total
        log_w = (log_p - log_q).expand(num, x.shape[0])
        weights = torch.softmax(log_w.detach(), dim=0)
        for value in draws.values():
            if value.requires_grad:
                value.register_hook(lambda g, w=weights: g * w.reshape(w.shape + (1,) * (g.dim() - 2)))
        surrogate = -(weights * log_w).sum()
        loss = -(torch.logsumexp(log_w.detach(), dim=0) - math.log(num)).sum()
        return surrogate, float(loss)

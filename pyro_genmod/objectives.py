"""Training objectives: Pyro's ELBO estimators, and the vectorized IWAE bound with its DReG gradient.

Each objective maps (model, guide, batch) to a pair: a tensor to differentiate, and the value
of the loss (the negative bound summed over the batch). For most estimators these coincide;
for ``tracegraph_elbo`` the tensor is Pyro's surrogate loss, whose gradient is the
score-function gradient, and for ``iwae_dreg`` it is a surrogate whose guide gradient is the
doubly reparameterized one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import infer, poutine
from torch import Tensor

from . import densities
from .errors import ConfigError, UnknownNameError
from .densities import score_program
from .importance import log_importance_weights

__all__ = ["Objective", "get_objective", "list_objectives"]

LossPair = tuple[Tensor, float]


def _check_reparameterizable(model, name: str) -> None:
    discrete = [site.name for site in model.latent_sites if site.discrete]
    if discrete:
        raise ConfigError(
            f"objective '{name}' differentiates through the guide's samples, but latent site "
            f"'{discrete[0]}' is discrete; use objective='traceenum_elbo' or 'tracegraph_elbo'"
        )


class Objective:
    """A named objective; ``objective(model, guide, x)`` returns ``(differentiable, value)``."""

    name = ""

    def __init__(self, num_particles: int = 1):
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ConfigError(f"num_particles must be a positive integer, got {num_particles}")
        self.num_particles = num_particles

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        raise NotImplementedError


class PyroELBO(Objective):
    """One of Pyro's ELBO estimators, particles vectorized."""

    elbo_class: type = infer.Trace_ELBO

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles)
        self.elbo = self.elbo_class(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=1,
        )

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        loss = self.elbo.differentiable_loss(model, guide, x)
        return loss, float(loss.detach())


class TraceELBO(PyroELBO):
    """Pyro's Trace_ELBO. For pairs whose guide sites are all reparameterized it is computed
    without Pyro traces by :func:`pyro_genmod.densities.elbo_loss`: the same loss and gradient on
    the same draws, at the cost of a hand-written step. Set ``use_fast = False`` to force Pyro."""

    name = "trace_elbo"
    elbo_class = infer.Trace_ELBO
    use_fast: bool = True

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles)
        self._fast_pairs: dict[tuple[int, int], bool] = {}  # probed once per (model, guide)

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        key = (id(model), id(guide))
        if key not in self._fast_pairs:
            self._fast_pairs[key] = self.use_fast and densities.supports_fast_elbo(model, guide, x)
        if self._fast_pairs[key]:
            loss = densities.elbo_loss(model, guide, x, self.num_particles)
            return loss, float(loss.detach())
        return super().__call__(model, guide, x)


class TraceMeanFieldELBO(PyroELBO):
    """Trace_ELBO with KL(q || p) in closed form wherever torch registers one (falls back to
    a Monte Carlo term per site otherwise); every guide site must be reparameterized."""

    name = "tracemeanfield_elbo"
    elbo_class = infer.TraceMeanField_ELBO

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        _check_reparameterizable(model, self.name)
        return super().__call__(model, guide, x)


class TraceEnumELBO(PyroELBO):
    name = "traceenum_elbo"
    elbo_class = infer.TraceEnum_ELBO


class TraceGraphELBO(PyroELBO):
    name = "tracegraph_elbo"
    elbo_class = infer.TraceGraph_ELBO

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        elbo, surrogate = self.elbo._loss_and_surrogate_loss(model, guide, (x,), {})
        return surrogate, -float(torch.as_tensor(elbo).detach())  # Pyro returns +ELBO


class IWAE(Objective):
    """The importance-weighted bound with K = ``num_particles`` (Burda et al., 2015).

    log (1/K) sum_k w_k with the K particles as a plate dimension; K = 1 is the ELBO. Unlike
    Pyro's ``RenyiELBO(alpha=0)`` it is differentiable and vectorized.
    """

    name = "iwae"

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        _check_reparameterizable(model, self.name)
        log_w = log_importance_weights(model, guide, x, self.num_particles)
        loss = -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()
        return loss, float(loss.detach())


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

    name = "iwae_dreg"

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        _check_reparameterizable(model, self.name)
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


_OBJECTIVES: dict[str, Callable[..., Objective]] = {
    cls.name: cls
    for cls in (TraceELBO, TraceMeanFieldELBO, TraceEnumELBO, TraceGraphELBO, IWAE, DReGIWAE)
}


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str, num_particles: int = 1) -> Objective:
    """Build the objective ``name`` (case-insensitive; ``Trace_ELBO`` works too)."""
    key = name.lower()
    if key not in _OBJECTIVES:
        raise UnknownNameError(f"unknown objective '{name}'; choose one of: {', '.join(list_objectives())}")
    return _OBJECTIVES[key](num_particles)

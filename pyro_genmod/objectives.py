"""Training objectives: Pyro's ELBO estimators, and the vectorized IWAE bound.

Each objective maps (model, guide, batch) to a pair: a tensor to differentiate, and the value
of the loss (the negative bound summed over the batch). For most estimators these coincide;
for ``tracegraph_elbo`` the tensor is Pyro's surrogate loss, whose gradient is the
score-function gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro import infer
from torch import Tensor

from .errors import ConfigError, UnknownNameError
from .importance import log_importance_weights

__all__ = ["Objective", "get_objective", "list_objectives"]

LossPair = tuple[Tensor, float]


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
    name = "trace_elbo"
    elbo_class = infer.Trace_ELBO


class TraceMeanFieldELBO(PyroELBO):
    name = "tracemeanfield_elbo"
    elbo_class = infer.TraceMeanField_ELBO


class TraceEnumELBO(PyroELBO):
    name = "traceenum_elbo"
    elbo_class = infer.TraceEnum_ELBO


class TraceGraphELBO(PyroELBO):
    name = "tracegraph_elbo"
    elbo_class = infer.TraceGraph_ELBO

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        loss, surrogate = self.elbo._loss_and_surrogate_loss(model, guide, (x,), {})
        return surrogate, float(loss)


class IWAE(Objective):
    """The importance-weighted bound with K = ``num_particles`` (Burda et al., 2015).

    log (1/K) sum_k w_k with the K particles as a plate dimension; K = 1 is the ELBO. Unlike
    Pyro's ``RenyiELBO(alpha=0)`` it is differentiable and vectorized.
    """

    name = "iwae"

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        log_w = log_importance_weights(model, guide, x, self.num_particles)
        loss = -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()
        return loss, float(loss.detach())


_OBJECTIVES: dict[str, Callable[..., Objective]] = {
    cls.name: cls for cls in (TraceELBO, TraceMeanFieldELBO, TraceEnumELBO, TraceGraphELBO, IWAE)
}


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str, num_particles: int = 1) -> Objective:
    """Build the objective ``name`` (case-insensitive; ``Trace_ELBO`` works too)."""
    key = name.lower()
    if key not in _OBJECTIVES:
        raise UnknownNameError(f"unknown objective '{name}'; choose one of: {', '.join(list_objectives())}")
    return _OBJECTIVES[key](num_particles)

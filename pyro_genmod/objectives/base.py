"""The objective contract: ``objective(model, guide, x)`` returns ``(differentiable, value)``.

Each objective is one file in this folder registered with ``@register_objective("name")``: a
tensor to differentiate, and the value of the loss (the negative bound summed over the batch).
For most estimators these coincide; for ``tracegraph_elbo`` the tensor is Pyro's surrogate loss,
whose gradient is the score-function gradient, and for ``iwae_dreg`` it is a surrogate whose
guide gradient is the doubly reparameterized one.
"""

from __future__ import annotations

from pyro import infer
from torch import Tensor

from pyro_genmod._registry import OBJECTIVES
from pyro_genmod.errors import ConfigError, UnknownNameError

__all__ = ["Objective", "PyroELBO", "LossPair", "check_reparameterizable", "get_objective", "list_objectives"]

LossPair = tuple[Tensor, float]


def check_reparameterizable(model, name: str) -> None:
    discrete = [site.name for site in model.latent_sites if site.discrete]
    if discrete:
        raise ConfigError(
            f"objective '{name}' differentiates through the guide's samples, but latent site "
            f"'{discrete[0]}' is discrete; use objective='traceenum_elbo' or 'tracegraph_elbo'"
        )


class Objective:
    """A named objective; ``objective(model, guide, x)`` returns ``(differentiable, value)``."""

    registry_name = ""  # set by @register_objective

    @property
    def name(self) -> str:
        return self.registry_name

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


def list_objectives() -> list[str]:
    """Names of all registered objectives."""
    return OBJECTIVES.names()


def get_objective(name: str, num_particles: int = 1) -> Objective:
    """Build the objective ``name`` (case-insensitive; ``Trace_ELBO`` works too)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in list_objectives():
        raise UnknownNameError(f"unknown objective '{name}'; choose one of: {', '.join(list_objectives())}")
    return OBJECTIVES.lookup(key)(num_particles)

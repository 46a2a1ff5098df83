"""Pyro's TraceMeanField_ELBO: analytic KL terms where torch registers them."""

from __future__ import annotations

from pyro import infer
from torch import Tensor

from pyro_genmod._registry import register_objective

from .base import LossPair, PyroELBO, check_reparameterizable

__all__ = ["TraceMeanFieldELBO"]


@register_objective("tracemeanfield_elbo")
class TraceMeanFieldELBO(PyroELBO):
    """Trace_ELBO with KL(q || p) in closed form wherever torch registers one (falls back to
    a Monte Carlo term per site otherwise); every guide site must be reparameterized."""

    elbo_class = infer.TraceMeanField_ELBO

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        check_reparameterizable(model, self.name)
        return super().__call__(model, guide, x)

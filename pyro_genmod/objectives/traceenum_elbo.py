"""Pyro's TraceEnum_ELBO: discrete latent sites summed out exactly."""

from __future__ import annotations

from pyro import infer

from pyro_genmod._registry import register_objective

from .base import PyroELBO

__all__ = ["TraceEnumELBO"]


@register_objective("traceenum_elbo")
class TraceEnumELBO(PyroELBO):
    elbo_class = infer.TraceEnum_ELBO

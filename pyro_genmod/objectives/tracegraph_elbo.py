"""Pyro's TraceGraph_ELBO: score-function gradients for non-reparameterized sites."""

from __future__ import annotations

import torch
from pyro import infer
from torch import Tensor

from pyro_genmod._registry import register_objective

from .base import LossPair, PyroELBO

__all__ = ["TraceGraphELBO"]


@register_objective("tracegraph_elbo")
class TraceGraphELBO(PyroELBO):
    elbo_class = infer.TraceGraph_ELBO

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        elbo, surrogate = self.elbo._loss_and_surrogate_loss(model, guide, (x,), {})
        return surrogate, -float(torch.as_tensor(elbo).detach())  # Pyro returns +ELBO

"""Pyro's Trace_ELBO, computed without traces where the pair allows (the default objective)."""

from __future__ import annotations

from pyro import infer
from torch import Tensor

from pyro_genmod import densities
from pyro_genmod._registry import register_objective

from .base import LossPair, PyroELBO

__all__ = ["TraceELBO"]


@register_objective("trace_elbo")
class TraceELBO(PyroELBO):
    """Pyro's Trace_ELBO. For pairs whose guide sites are all reparameterized it is computed
    without Pyro traces by :func:`pyro_genmod.densities.elbo_loss`: the same loss and gradient on
    the same draws, at the cost of a hand-written step. Set ``use_fast = False`` to force Pyro."""

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

"""The prior as the proposal: q(z|x) = p(z)."""

from __future__ import annotations

import pyro
from pyro import poutine
from torch import Tensor

from pyro_genmod._registry import register_guide

from .base import Guide

__all__ = ["PriorGuide"]


@register_guide("prior")
class PriorGuide(Guide):
    """The model's own prior p(z), ignoring x: the importance-sampling baseline.

    It has no parameters. Its importance weights are p(x|z), whose variance grows quickly with
    the latent dimension, which PSIS k-hat shows.

    Arguments:
        model: the model whose prior to sample.
    """

    def __init__(self, model):
        super().__init__(model)
        # Held without registering it as a submodule: the model's parameters are not the guide's.
        object.__setattr__(self, "_model", model)

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        if getattr(self._model, "is_program", False):  # a Pyro program: run it with its observations hidden
            trace = poutine.trace(poutine.block(self._model, hide_fn=lambda site: site["is_observed"])).get_trace(x)
            return {site.name: trace.nodes[site.name]["value"] for site in self.latent_sites}
        with pyro.plate(self.data_plate, x.shape[0]):
            return self._model.prior()

"""Amortized categorical guide for discrete latent sites with finitely many values."""

from __future__ import annotations


import pyro.distributions as dist
from torch import Tensor
from torch.distributions import constraints

from pyro_genmod._registry import register_guide
from pyro_genmod.latents import LatentSite
from pyro_genmod.nn import make_encoder

from .base import Guide

__all__ = ["CategoricalGuide"]


def _num_values(site: LatentSite) -> int | None:
    support = site.support
    if isinstance(support, constraints.integer_interval) and not site.event_shape:
        return int(support.upper_bound) - int(support.lower_bound) + 1
    return None


@register_guide("categorical")
class CategoricalGuide(Guide):
    """Amortized q(k|x) = Categorical(softmax(MLP(x))) for each discrete site, independently.

    Covers scalar sites with support ``integer_interval(0, C - 1)``. Discrete sites are marked
    for parallel enumeration, so with ``objective="traceenum_elbo"`` the ELBO sums over all C
    values exactly; the importance-sampling scorer samples them instead (a discrete proposal).

    References:
        | Semi-Supervised Learning with Deep Generative Models (Kingma et al., 2014)
          https://arxiv.org/abs/1406.5298

    Arguments:
        model: the model whose discrete sites to cover.
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    @classmethod
    def site_problem(cls, site: LatentSite) -> str | None:
        if not site.discrete:
            return "the site is continuous, and this family is categorical; use mean_field"
        if _num_values(site) is None or int(site.support.lower_bound) != 0:
            return "this family covers scalar sites with support integer_interval(0, C - 1) only"
        return None

    def __init__(self, model, hidden=(64,), activation: str = "tanh", encoder: str = "mlp", channels: int = 32):
        super().__init__(model)
        self.sizes = [_num_values(site) for site in self.latent_sites]
        self.encoder = make_encoder(encoder, self.data_shape, sum(self.sizes), hidden, activation, channels)

    def variational_parameters(self, x: Tensor) -> Tensor:
        """The encoder's logits for every site, shape ``(N, sum(C))``."""
        return self.encoder(x.reshape(x.shape[0], -1))

    def posterior(self, x: Tensor) -> dict[str, dist.Distribution]:
        chunks = self.variational_parameters(x).split(self.sizes, dim=-1)
        return {
            site.name: dist.Categorical(logits=logits)
            for site, logits in zip(self.latent_sites, chunks)
        }

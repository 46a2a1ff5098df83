"""Amortized mean-field Normal guide."""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from pyro_genmod._registry import register_guide

from .base import AmortizedGuide, softplus_scale

__all__ = ["MeanField"]


@register_guide("mean_field")
class MeanField(AmortizedGuide):
    """Amortized diagonal Normal: q(z|x) = N(mu(x), diag sigma(x)^2), the standard VAE encoder.

    References:
        | Auto-Encoding Variational Bayes (Kingma & Welling, 2014) https://arxiv.org/abs/1312.6114

    Arguments:
        model: the model whose latent sites to cover (continuous sites; constrained supports
            are reached through ``biject_to``).
        hidden: encoder hidden-layer widths.
        activation: encoder activation.
    """

    def num_params(self, size: int) -> int:
        return 2 * size

    def site_distribution(self, params: Tensor, size: int) -> dist.Distribution:
        loc, raw_scale = params.chunk(2, dim=-1)  # (size, size): chunk is split without its Python wrapper
        return dist.Normal(loc, softplus_scale(raw_scale)).to_event(1)

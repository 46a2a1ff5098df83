"""Amortized Delta (point-estimate) guide."""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from pyro_genmod._registry import register_guide

from .base import AmortizedGuide

__all__ = ["DeltaGuide"]


@register_guide("delta")
class DeltaGuide(AmortizedGuide):
    """Amortized point estimate: q(z|x) = delta(z - f(x)).

    Under the ELBO this is MAP inference of z per point, so a VAE trained with it is an
    autoencoder regularized by log p(z). A point mass is not a density, so it cannot be an
    importance-sampling proposal: score such a run with the ``prior`` guide as proposal.

    Arguments:
        model: the model whose latent sites to cover.
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    is_point_estimate = True

    def num_params(self, size: int) -> int:
        return size

    def site_distribution(self, params: Tensor, size: int) -> dist.Distribution:
        return dist.Delta(params, event_dim=1)

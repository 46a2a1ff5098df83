"""Amortized mean-field Normal guide."""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from pyro_genmod._registry import register_guide
from pyro_genmod.distributions import normal_rsample_with_log_prob

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
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    def num_params(self, size: int) -> int:
        return 2 * size

    def normal_parameters(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale) from one site's encoder output of width ``2 * size``."""
        loc, raw_scale = params.chunk(2, dim=-1)  # (size, size): chunk is split without its Python wrapper
        return loc, softplus_scale(raw_scale)

    def site_distribution(self, params: Tensor, size: int) -> dist.Distribution:
        return dist.Normal(*self.normal_parameters(params)).to_event(1)

    def sample_with_log_prob(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        # The one-vector-site case (every VAE) straight from the encoder output, without building
        # the Normal; a subclass, several sites or a constrained site take the general route.
        site = self.latent_sites[0]
        if type(self) is not MeanField or len(self.latent_sites) > 1 or self.transforms[site.name] is not None or (
            len(self.shapes[site.name]) != 1
        ):
            return super().sample_with_log_prob(x)
        z, log_q = normal_rsample_with_log_prob(*self.normal_parameters(self.variational_parameters(x)))
        return {site.name: z}, log_q.sum(-1)

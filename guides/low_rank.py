"""Amortized low-rank plus diagonal Normal guide."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
from torch import Tensor

from pyro_genmod._registry import register_guide

from .base import AmortizedGuide, softplus_scale

__all__ = ["LowRank"]


@register_guide("low_rank")
class LowRank(AmortizedGuide):
    """Amortized low-rank plus diagonal Normal: q(z|x) = N(mu(x), W(x) W(x)^T + diag d(x)).

    W has ``rank`` columns, so the cost grows linearly in the latent dimension while still
    capturing the ``rank`` leading posterior correlations. Distinct sites are independent.

    References:
        | Gaussian Variational Approximation With a Factor Covariance Structure
          (Ong, Nott & Smith, 2018) https://arxiv.org/abs/1701.03208

    Arguments:
        model: the model whose latent sites to cover.
        rank: number of columns of W.
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    def __init__(
        self, model, rank: int = 2, hidden: Sequence[int] = (200, 200), activation: str = "tanh",
        encoder: str = "mlp", channels: int = 32,
    ):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.rank = rank
        super().__init__(model, hidden, activation, encoder, channels)

    def num_params(self, size: int) -> int:
        return size * (self.rank + 2)

    def site_distribution(self, params: Tensor, size: int) -> dist.Distribution:
        loc, factor, raw_diag = params.split([size, size * self.rank, size], dim=-1)
        factor = factor.reshape(*factor.shape[:-1], size, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, softplus_scale(raw_diag))

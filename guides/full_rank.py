"""Amortized full-rank (Cholesky) Normal guide."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_genmod._registry import register_guide

from .base import AmortizedGuide, softplus_scale

__all__ = ["FullRank"]


@register_guide("full_rank")
class FullRank(AmortizedGuide):
    """Amortized full-covariance Normal: q(z|x) = N(mu(x), L(x) L(x)^T) with L lower triangular.

    Each latent site gets its own full covariance; distinct sites are independent.

    Arguments:
        model: the model whose latent sites to cover.
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    def num_params(self, size: int) -> int:
        return size + size * (size + 1) // 2

    def site_distribution(self, params: Tensor, size: int) -> dist.Distribution:
        loc, entries = params.split([size, size * (size + 1) // 2], dim=-1)
        rows, cols = torch.tril_indices(size, size, device=params.device)
        tril = params.new_zeros(*params.shape[:-1], size, size)
        tril[..., rows, cols] = entries
        diagonal = softplus_scale(tril.diagonal(dim1=-2, dim2=-1))
        tril = tril.tril(-1) + torch.diag_embed(diagonal)
        return dist.MultivariateNormal(loc, scale_tril=tril)

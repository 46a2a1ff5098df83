"""Inverse autoregressive flow guide: an amortized Normal followed by IAF layers."""

from __future__ import annotations

from pyro.distributions import transforms as T
from torch import nn

from pyro_genmod._registry import register_guide

from ._flow import FlowGuide

__all__ = ["IAF"]


@register_guide("iaf")
class IAF(FlowGuide):
    """Amortized Normal followed by inverse autoregressive flows (Pyro ``affine_autoregressive``).

    Each layer is z' = sigma(z) * z + (1 - sigma(z)) * m(z) with (m, sigma) from a masked
    autoregressive network (Pyro's ``AutoRegressiveNN``, or ``ConditionalAutoRegressiveNN``
    fed the encoder context c(x), as in the paper). Sampling is one network pass per layer;
    scoring a point the guide did not draw inverts it in ``size`` passes.

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
          https://arxiv.org/abs/1606.04934

    Arguments:
        model: the model whose latent sites to cover.
        num_flows: number of IAF layers per site.
        flow_hidden: hidden widths of each autoregressive network (Pyro's default: 3D+1,
            10D when conditional).
        conditional: feed the encoder context c(x) to each autoregressive network.
        context_dim: size of c(x).
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    def make_flow(self, size: int, context_dim: int, hidden_dims: list[int] | None) -> nn.Module:
        if context_dim:
            return T.conditional_affine_autoregressive(size, context_dim, hidden_dims, stable=True)
        return T.affine_autoregressive(size, hidden_dims, stable=True)

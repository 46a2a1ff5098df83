"""Planar flow guide: an amortized Normal followed by planar flows."""

from __future__ import annotations

from pyro.distributions import transforms as T

from pyro_genmod._registry import register_guide

from ._flow import FlowGuide

__all__ = ["Planar"]


@register_guide("planar")
class Planar(FlowGuide):
    """Amortized Normal followed by planar flows z' = z + u h(w^T z + b) (Pyro ``planar``).

    With ``conditional`` (the default) u, w and b come from the encoder context c(x), as in
    the paper. A planar flow has no closed-form inverse, so the guide scores only its own
    samples (cached): enough for SVI and importance sampling, not for DReG.

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
          https://arxiv.org/abs/1505.05770

    Arguments:
        model: the model whose latent sites to cover.
        num_flows: number of planar layers per site (default 8).
        flow_hidden: hidden widths of the network from c(x) to (u, w, b) (default: 10D).
        conditional: amortize the flow parameters through c(x).
        context_dim: size of c(x).
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    scores_own_samples_only = True
    default_num_flows = 8
    flow = T.planar
    conditional_flow = T.conditional_planar

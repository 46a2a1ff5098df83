"""Top-down hierarchical guide q(z_L|x) q(z_{L-1}|z_L, x) ... for multi-latent models."""

from __future__ import annotations

from math import prod

import pyro
import torch
from torch import Tensor, nn

from pyro_genmod._registry import register_guide
from pyro_genmod.nn import ACTIVATIONS

from ._hierarchy import HierarchicalGuide, flat

__all__ = ["TopDown"]


@register_guide("top_down")
class TopDown(HierarchicalGuide):
    """Top-down guide: q(z_L|x) q(z_{L-1}|z_L, x) ..., sampled in the generative order.

    A deterministic bottom-up pass computes h(x); then z_L ~ q(z_L|h), z_{L-1} ~
    q(z_{L-1}|z_L, h), and so on down to the site nearest the data.
    The guide factorizes like the true posterior p(z_L|x) p(z_{L-1}|z_L, x) ..., which the
    bottom-up guide cannot (its q(z_2|z_1) ignores x). This is the ladder VAE's inference
    order, without its precision-weighted merge with the prior.

    References:
        | Ladder Variational Autoencoders (Sønderby et al., 2016) https://arxiv.org/abs/1602.02282

    Arguments:
        model: a model with at least two continuous latent sites.
        hidden: hidden widths of the deterministic encoder h(x) and of each level's network.
        activation: network activation.
        encoder: the network h(x): ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    def __init__(
        self, model, hidden=(200, 200), activation: str = "tanh", encoder: str = "mlp", channels: int = 32
    ):
        super().__init__(model, hidden, activation, encoder, channels)
        width = self.hidden[-1] if self.hidden else prod(self.data_shape)
        self.encoder = nn.Sequential(self.data_network(width, self.hidden[:-1]), ACTIVATIONS[activation]())
        inputs = [width] + [width + site.size for site in self.order[:-1]]
        self.heads = nn.ModuleList(self.head(n, site) for n, site in zip(inputs, self.order))

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        h = self.encoder(x.reshape(x.shape[0], -1))
        inputs, values = h, {}
        with pyro.plate(self.data_plate, x.shape[0]):
            for head, site in zip(self.heads, self.order):
                values[site.name] = pyro.sample(site.name, self.site_posterior(head, inputs, site))
                above = flat(values[site.name], site)
                inputs = torch.cat([h.expand(*above.shape[:-1], h.shape[-1]), above], dim=-1)
        return values

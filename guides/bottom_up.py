"""Bottom-up hierarchical guide q(z1|x) q(z2|z1) ... for multi-latent models."""

from __future__ import annotations

from math import prod

import pyro
from torch import Tensor, nn

from pyro_genmod._registry import register_guide

from ._hierarchy import HierarchicalGuide, flat
from .base import unconstraining

__all__ = ["BottomUp"]


@register_guide("bottom_up")
class BottomUp(HierarchicalGuide):
    """Bottom-up guide: q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}), each a diagonal Normal MLP.

    z_1 is the site nearest the data (the last one the prior samples), z_L the top. This is
    the inference network of Burda et al.'s two-stochastic-layer model.

    References:
        | Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015)
          https://arxiv.org/abs/1509.00519

    Arguments:
        model: a model with at least two continuous latent sites.
        hidden: hidden widths of each level's network.
        activation: network activation.
        encoder: the network q(z_1|x): ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    def __init__(
        self, model, hidden=(200, 200), activation: str = "tanh", encoder: str = "mlp", channels: int = 32
    ):
        super().__init__(model, hidden, activation, encoder, channels)
        self.levels = tuple(reversed(self.order))
        first = self.data_network(2 * prod(unconstraining(self.levels[0])[0]), self.hidden)
        above = [self.head(site.size, upper) for site, upper in zip(self.levels[:-1], self.levels[1:])]
        self.heads = nn.ModuleList([first, *above])

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        inputs, values = x.reshape(x.shape[0], -1), {}
        with pyro.plate(self.data_plate, x.shape[0]):
            for head, site in zip(self.heads, self.levels):
                values[site.name] = pyro.sample(site.name, self.site_posterior(head, inputs, site))
                inputs = flat(values[site.name], site)
        return values

"""Ladder inference: a bottom-up pass, then top-down sampling with precision-weighted merges."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_genmod._registry import register_guide
from pyro_genmod.nn import ACTIVATIONS, mlp

from ._hierarchy import HierarchicalGuide
from .base import softplus_scale

__all__ = ["LadderGuide", "precision_weighted"]


def precision_weighted(loc_a: Tensor, scale_a: Tensor, loc_b: Tensor, scale_b: Tensor) -> tuple[Tensor, Tensor]:
    """The product of N(loc_a, scale_a^2) and N(loc_b, scale_b^2), renormalized: (loc, scale) with
    precision 1/scale^2 = 1/scale_a^2 + 1/scale_b^2 and loc the precision-weighted mean."""
    precision_a, precision_b = scale_a.pow(-2), scale_b.pow(-2)
    precision = precision_a + precision_b
    return (loc_a * precision_a + loc_b * precision_b) / precision, precision.rsqrt()


@register_guide("ladder")
class LadderGuide(HierarchicalGuide):
    r"""Ladder inference: each q(z_l|z_{l+1}, x) is a bottom-up Gaussian times the model's p(z_l|z_{l+1}).

    q(z|x) = q(z_L|x) prod_l q(z_l|z_{l+1}, x), each factor the precision-weighted product of a
    bottom-up Gaussian N(mu^_l(x), sigma^_l(x)^2) and the model's own top-down p(z_l|z_{l+1}).

    A deterministic bottom-up pass d_1 = f_1(x), d_l = f_l(d_{l-1}) gives each layer's
    likelihood-like estimate (mu^_l, sigma^_l). Then z_L ~ N(mu^_L, sigma^_L^2) and, going down,
    z_l ~ N(mu_l, sigma_l^2) with sigma_l^-2 = sigma^_l^-2 + sigma_p^-2 and mu_l = sigma_l^2
    (mu^_l sigma^_l^-2 + mu_p sigma_p^-2), where (mu_p, sigma_p) is the model's
    ``conditional_prior`` at z_{l+1}. The top-down networks are the model's (shared, not
    copied), as in the paper. ``top_down`` is the same inference order without the merge.

    References:
        | Ladder Variational Autoencoders (Sønderby et al., 2016) https://arxiv.org/abs/1602.02282

    Arguments:
        model: a model with a top-down ``conditional_prior`` (``ladder_vae``).
        hidden: width of each layer's bottom-up network (two hidden layers each; default: the
            model's ``hidden``).
        activation: network activation.
        encoder: the first network f_1(x): ``"mlp"`` (default), ``"conv"`` or ``"resnet"``
            (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        if not callable(getattr(model, "conditional_prior", None)):
            return (
                "this family merges with the model's top-down conditionals (conditional_prior), which only "
                "'ladder_vae' exposes; use top_down"
            )
        return super().unsupported_reason(model)

    def __init__(
        self,
        model,
        hidden: Sequence[int] | None = None,
        activation: str = "tanh",
        encoder: str = "mlp",
        channels: int = 32,
    ):
        levels = tuple(model.latent_sites)  # the data upwards: z_1 ... z_L
        hidden = tuple(model.hidden) if hidden is None else tuple(int(h) for h in hidden)
        if len(hidden) != len(levels) or any(h <= 0 for h in hidden):
            raise ValueError(f"hidden must be {len(levels)} positive widths, one per latent layer, got {list(hidden)}")
        super().__init__(model, hidden, activation, encoder, channels)
        self.levels = levels
        # Held without registering it as a submodule: the top-down networks are the model's parameters.
        object.__setattr__(self, "_model", model)
        act = ACTIVATIONS[activation]
        first = nn.Sequential(self.data_network(hidden[0], (hidden[0],)), act())
        above = [nn.Sequential(mlp(hidden[i - 1], (hidden[i],), hidden[i], activation), act())
                 for i in range(1, len(levels))]
        self.bottom_up = nn.ModuleList([first, *above])
        self.heads = nn.ModuleList(nn.Linear(h, 2 * site.size) for h, site in zip(hidden, levels))

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        d, estimates = x.reshape(x.shape[0], -1), []
        for network, head in zip(self.bottom_up, self.heads):
            d = network(d)
            loc, raw_scale = head(d).chunk(2, dim=-1)
            estimates.append((loc, softplus_scale(raw_scale)))
        values: dict[str, Tensor] = {}
        with pyro.plate(self.data_plate, x.shape[0]):
            for level in range(len(self.levels) - 1, -1, -1):
                loc, scale = estimates[level]
                if level < len(self.levels) - 1:
                    above = values[self.levels[level + 1].name]
                    loc, scale = precision_weighted(loc, scale, *self._model.conditional_prior(level, above))
                name = self.levels[level].name
                values[name] = pyro.sample(name, dist.Normal(loc, scale).to_event(1))
        return values

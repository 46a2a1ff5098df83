"""Shared base of the hierarchical guides: one conditional diagonal Normal per latent site."""

from __future__ import annotations

from math import prod

import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_genmod.latents import LatentSite
from pyro_genmod.nn import make_encoder, mlp

from .base import Guide, onto_site, softplus_scale, unconstraining

__all__ = ["HierarchicalGuide", "sampling_order", "flat"]


def sampling_order(model) -> tuple[LatentSite, ...]:
    """The model's latent sites in the order its prior samples them: the top of the hierarchy first.

    Found by tracing one draw from the model; a model that cannot draw without extra inputs
    keeps its declaration order.
    """
    sites = {site.name: site for site in model.latent_sites}
    try:
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(model).get_trace(num_samples=1)
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return tuple(model.latent_sites)
    order = [sites[name] for name in trace.nodes if name in sites]
    return tuple(order) if len(order) == len(sites) else tuple(model.latent_sites)


def flat(value: Tensor, site: LatentSite) -> Tensor:
    """``value`` with the site's event dimensions flattened into one (batch dimensions kept)."""
    return value.reshape(*value.shape[: value.dim() - len(site.event_shape)], -1)


class HierarchicalGuide(Guide):
    """A guide for models with several latent sites that samples them one after another.

    Each site gets q(z_i | inputs) = N(mu(inputs), diag sigma(inputs)^2) on its unconstrained
    space, mapped onto its support; subclasses choose the order and the inputs. The network
    that reads x is :func:`~pyro_genmod.nn.make_encoder`'s (``encoder="mlp" | "conv" | "resnet"``,
    ``channels``); the networks between latent sites are MLPs.
    """

    @classmethod
    def site_problem(cls, site: LatentSite) -> str | None:
        if site.discrete:
            return "the site is discrete, and this family is continuous"
        return None

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        if len(model.latent_sites) < 2:
            return (
                f"a hierarchical guide needs at least two latent sites, the model has "
                f"{len(model.latent_sites)}; use mean_field"
            )
        return super().unsupported_reason(model)

    def __init__(
        self, model, hidden=(200, 200), activation: str = "tanh", encoder: str = "mlp", channels: int = 32
    ):
        super().__init__(model)
        self.order = sampling_order(model)
        self.hidden, self.activation = tuple(int(h) for h in hidden), activation
        self.encoder_options = {"kind": encoder, "activation": activation, "channels": channels}

    def data_network(self, out_features: int, hidden) -> nn.Module:
        """The network from x (flattened) to ``out_features``, of the configured encoder kind."""
        return make_encoder(data_shape=self.data_shape, out_features=out_features, hidden=hidden, **self.encoder_options)

    def head(self, in_features: int, site: LatentSite) -> nn.Module:
        """A network from ``in_features`` inputs to the site's Normal parameters."""
        size = prod(unconstraining(site)[0])
        return mlp(in_features, self.hidden, 2 * size, self.activation)

    def site_posterior(self, head: nn.Module, inputs: Tensor, site: LatentSite) -> dist.Distribution:
        loc, raw_scale = head(inputs).chunk(2, dim=-1)
        return onto_site(dist.Normal(loc, softplus_scale(raw_scale)).to_event(1), site)

"""Shared base of the flow guides: an amortized Normal pushed through a stack of flows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import pyro.distributions as dist
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn

from pyro_genmod.latents import LatentSite

from .base import AmortizedGuide, softplus_scale

__all__ = ["FlowGuide"]


class FlowGuide(AmortizedGuide):
    """q(z|x): z = f_K o ... o f_1(e), e ~ N(mu(x), diag sigma(x)^2), per latent site.

    The encoder outputs, per site, the base Normal's loc and scale and (for conditional flows)
    a context vector c(x) that the flows are conditioned on, so the flow itself is amortized.
    All three are the point's variational parameters (:meth:`variational_parameters`): a
    ``local`` guide optimizes them per point, flows held fixed. Subclasses build one flow layer
    with :meth:`make_flow`.

    Arguments:
        model: the model whose latent sites to cover.
        num_flows: number of flow layers per site (the depth); ``None`` uses the family's
            default (``default_num_flows``).
        flow_hidden: hidden widths of each flow layer's network (the width); ``None`` uses the
            family's default.
        conditional: condition each flow layer on an encoder context c(x); otherwise the flow's
            parameters are shared by all points.
        context_dim: size of c(x) when ``conditional``.
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    can_condition = True
    default_num_flows = 2
    # Pyro helpers ``flow(size)`` and ``conditional_flow(size, context_dim, hidden_dims)``
    flow: Callable | None = None
    conditional_flow: Callable | None = None
    scores_own_samples_only = False  # planar, radial and Sylvester flows cannot be inverted

    def __init__(
        self,
        model,
        num_flows: int | None = None,
        flow_hidden: Sequence[int] | None = None,
        conditional: bool = True,
        context_dim: int = 16,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        encoder: str = "mlp",
        channels: int = 32,
    ):
        num_flows = self.default_num_flows if num_flows is None else num_flows
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise ValueError(f"num_flows must be a positive integer, got {num_flows!r}")
        if conditional and not self.can_condition:
            raise ValueError(f"Pyro has no conditional {self.registry_name} flow; pass conditional=False")
        if conditional and (isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1):
            raise ValueError(f"context_dim must be a positive integer, got {context_dim!r}")
        if flow_hidden is not None and any(int(h) <= 0 for h in flow_hidden):
            raise ValueError(f"flow_hidden sizes must be positive, got {list(flow_hidden)}")
        self.context_dim = int(context_dim) if conditional else 0
        super().__init__(model, hidden, activation, encoder, channels)
        self.num_flows, self.conditional = num_flows, bool(conditional)
        hidden_dims = None if flow_hidden is None else [int(h) for h in flow_hidden]
        self.site_index = {site.name: i for i, site in enumerate(self.latent_sites)}
        self.flows = nn.ModuleList(
            nn.ModuleList(
                self.make_flow(prod(self.shapes[site.name]), self.context_dim, hidden_dims)
                for _ in range(num_flows)
            )
            for site in self.latent_sites
        )

    def make_flow(self, size: int, context_dim: int, hidden_dims: list[int] | None) -> nn.Module:
        """One flow layer on ``size`` values, conditional on ``context_dim`` values if > 0."""
        if context_dim:
            return type(self).conditional_flow(size, context_dim, hidden_dims)
        return type(self).flow(size)

    def num_params(self, size: int) -> int:
        return 2 * size + self.context_dim

    def flat_posterior(self, site: LatentSite, params: Tensor) -> dist.Distribution:
        size = prod(self.shapes[site.name])
        loc, raw_scale, context = params.split([size, size, self.context_dim], dim=-1)
        base = dist.Normal(loc, softplus_scale(raw_scale)).to_event(1)
        flows = [
            flow.condition(context) if isinstance(flow, ConditionalTransformModule) else flow
            for flow in self.flows[self.site_index[site.name]]
        ]
        return dist.TransformedDistribution(base, flows)

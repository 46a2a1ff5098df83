"""Neural spline flow guide: an amortized Normal followed by rational-quadratic spline flows."""

from __future__ import annotations

from pyro.distributions import transforms as T
from torch import nn

from pyro_genmod._registry import register_guide

from ._flow import FlowGuide

__all__ = ["Spline"]


@register_guide("spline")
class Spline(FlowGuide):
    """Amortized Normal followed by autoregressive neural spline flows (Pyro ``spline_autoregressive``).

    Each coordinate passes through a monotonic rational spline on [-bound, bound] (identity
    outside) whose knots come from a masked autoregressive network, conditioned on the encoder
    context c(x) by default.

    References:
        | Neural Spline Flows (Durkan et al., 2019) https://arxiv.org/abs/1906.04032

    Arguments:
        model: the model whose latent sites to cover.
        num_flows: number of spline layers per site.
        flow_hidden: hidden widths of each autoregressive network (Pyro's default: 10D, 10D).
        count_bins: spline segments per coordinate.
        bound: half-width of the box the spline acts on.
        order: ``"linear"`` or ``"quadratic"`` rational splines.
        conditional: feed the encoder context c(x) to each autoregressive network.
        context_dim: size of c(x).
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    default_num_flows = 1

    def __init__(self, model, num_flows: int | None = None, count_bins: int = 8, bound: float = 3.0, order: str = "linear", **options):
        if isinstance(count_bins, bool) or not isinstance(count_bins, int) or count_bins < 2:
            raise ValueError(f"count_bins must be an integer >= 2, got {count_bins!r}")
        if order not in ("linear", "quadratic"):
            raise ValueError(f"order must be 'linear' or 'quadratic', got {order!r}")
        if not float(bound) > 0:
            raise ValueError(f"bound must be positive, got {bound!r}")
        self.spline_options = dict(count_bins=count_bins, bound=float(bound), order=order)
        super().__init__(model, num_flows=num_flows, **options)

    def make_flow(self, size: int, context_dim: int, hidden_dims: list[int] | None) -> nn.Module:
        if context_dim:
            return T.conditional_spline_autoregressive(size, context_dim, hidden_dims, **self.spline_options)
        return T.spline_autoregressive(size, hidden_dims, **self.spline_options)

"""Householder Sylvester flow guide: an amortized Normal followed by Sylvester flows."""

from __future__ import annotations

from pyro.distributions import transforms as T
from torch import nn

from pyro_genmod._registry import register_guide

from ._flow import FlowGuide

__all__ = ["Sylvester"]


@register_guide("sylvester")
class Sylvester(FlowGuide):
    """Amortized Normal followed by Householder Sylvester flows (Pyro ``sylvester``).

    z' = z + Q R h(R~ Q^T z + b) with Q a product of Householder reflections. Pyro has no
    conditional Sylvester flow, so, unlike the paper, the flow parameters are shared by all
    points and only the base Normal is amortized. No closed-form inverse: the guide scores only
    its own samples (cached), enough for SVI and importance sampling, not for DReG.

    References:
        | Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018)
          https://arxiv.org/abs/1803.05649

    Arguments:
        model: the model whose latent sites to cover.
        num_flows: number of Sylvester layers per site.
        householder: Householder reflections per layer.
        hidden: encoder hidden-layer widths.
        activation: encoder activation.
    """

    can_condition = False
    scores_own_samples_only = True

    default_num_flows = 4

    def __init__(self, model, num_flows: int | None = None, householder: int = 2, hidden=(200, 200), activation: str = "tanh"):
        if isinstance(householder, bool) or not isinstance(householder, int) or householder < 1:
            raise ValueError(f"householder must be a positive integer, got {householder!r}")
        self.householder = householder
        super().__init__(model, num_flows=num_flows, conditional=False, hidden=hidden, activation=activation)

    def make_flow(self, size: int, context_dim: int, hidden_dims: list[int] | None) -> nn.Module:
        return T.sylvester(size, count_transforms=min(self.householder, size))

"""Householder Sylvester flow guide: an amortized Normal followed by Sylvester flows."""

from __future__ import annotations

import torch
from pyro.distributions.transforms import Sylvester as PyroSylvester
from torch import Tensor, nn

from pyro_genmod._registry import register_guide

from ._flow import FlowGuide

__all__ = ["Sylvester", "SylvesterFlow"]


class SylvesterFlow(PyroSylvester):
    """Pyro's Householder Sylvester flow, oriented as in the paper so its log-determinant is exact.

    In row-vector form Pyro 1.9.2 computes y = x + h(x S Q^T + b) R Q, whose Jacobian
    I + R^T Q^T D Q S^T is not triangular after the determinant lemma, yet it reports
    sum log(1 + h' R_ii S_ii), which is off whenever Q is not the identity. Here
    y = x + h(x Q S^T + b) R^T Q^T, i.e. z' = z + Q R h(S Q^T z + b), whose determinant is
    det(I + D S R) = prod(1 + h'_i S_ii R_ii) exactly.
    """

    def _call(self, x: Tensor) -> Tensor:
        q, r, s = self.Q(x), self.R(), self.S()
        preactivation = x @ q @ s.T + self.b
        y = x + self.tanh(preactivation) @ r.T @ q.T
        self._cached_logDetJ = torch.log1p(self.dtanh_dx(preactivation) * r.diagonal() * s.diagonal() + 1e-8).sum(-1)
        return y


@register_guide("sylvester")
class Sylvester(FlowGuide):
    """Amortized Normal followed by Householder Sylvester flows z' = z + Q R h(R~ Q^T z + b).

    Q is a product of Householder reflections, R and R~ upper triangular (:class:`SylvesterFlow`,
    Pyro's transform with its orientation fixed). Pyro has no conditional Sylvester flow, so,
    unlike the paper, the flow parameters are shared by all points and only the base Normal is
    amortized. No closed-form inverse: the guide scores only its own samples (cached), enough
    for SVI and importance sampling, not for DReG.

    References:
        | Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018)
          https://arxiv.org/abs/1803.05649

    Arguments:
        model: the model whose latent sites to cover.
        num_flows: number of Sylvester layers per site (default 4).
        householder: Householder reflections per layer.
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
    """

    can_condition = False
    scores_own_samples_only = True
    default_num_flows = 4

    def __init__(
        self, model, num_flows: int | None = None, householder: int = 2, hidden=(200, 200), activation: str = "tanh",
        encoder: str = "mlp", channels: int = 32,
    ):
        if isinstance(householder, bool) or not isinstance(householder, int) or householder < 1:
            raise ValueError(f"householder must be a positive integer, got {householder!r}")
        self.householder = householder
        super().__init__(
            model, num_flows=num_flows, conditional=False, hidden=hidden, activation=activation, encoder=encoder,
            channels=channels,
        )

    def make_flow(self, size: int, context_dim: int, hidden_dims: list[int] | None) -> nn.Module:
        return SylvesterFlow(size, count_transforms=min(self.householder, size))

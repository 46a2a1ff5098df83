"""Small network builders shared by models and guides."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["mlp", "ACTIVATIONS", "join_label"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "tanh") -> nn.Sequential:
    """A multilayer perceptron ``in -> hidden... -> out`` with ``activation`` between layers."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
    if any(int(h) <= 0 for h in hidden):
        raise ValueError(f"hidden layer sizes must be positive, got {list(hidden)}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
        width = int(h)
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def join_label(features: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """``[features, one_hot(y)]`` on the last dimension, broadcasting their batch dimensions.

    ``features`` has shape ``(..., F)`` and ``y`` integer shape ``(...)``; under enumeration or
    particle plates the two batch shapes differ, so both are expanded to the broadcast shape.
    """
    one_hot = F.one_hot(y.long(), num_classes).to(features.dtype)
    batch = torch.broadcast_shapes(features.shape[:-1], one_hot.shape[:-1])
    return torch.cat([features.expand(*batch, -1), one_hot.expand(*batch, -1)], dim=-1)

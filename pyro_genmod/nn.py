"""Small network builders shared by models and guides."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["mlp", "ACTIVATIONS"]

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

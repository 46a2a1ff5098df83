"""The likelihood contract: p(x | decoder output) as a small module returning a Pyro distribution.

Each likelihood is one file in this folder registered with ``@register_likelihood("name")``;
models build theirs with :func:`create_likelihood`.
"""

from __future__ import annotations

import inspect
from math import prod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_genmod.distributions import sum_event

__all__ = ["Likelihood", "create_likelihood", "bernoulli_logits_log_prob", "unit_interval_problem"]


class Likelihood(nn.Module):
    """Contract: ``forward(out)`` maps decoder output of shape ``(..., out_features)`` to a
    distribution with event shape ``data_shape``; ``data_problem(x)`` says why ``x`` is outside
    its support. ``size`` is the number of scalars in one point and ``out_features`` =
    ``params_per_dim * size`` the width a decoder must produce."""

    registry_name = ""  # set by @register_likelihood
    params_per_dim = 1

    @property
    def name(self) -> str:
        return self.registry_name

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.size = prod(self.data_shape)

    @property
    def out_features(self) -> int:
        return self.params_per_dim * self.size

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        """log p(x | decoder output ``out``) per point, summed over the data dimensions:
        ``self(out).log_prob(x)``. A subclass may compute it without building the distribution
        (every training step of a VAE calls it)."""
        return self(out).log_prob(x)

    def _reshape(self, out: Tensor) -> Tensor:
        return out.reshape(*out.shape[:-1], *self.data_shape)

    def _split(self, out: Tensor) -> list[Tensor]:
        """The decoder output as ``params_per_dim`` tensors of shape ``(..., *data_shape)``."""
        return [self._reshape(part) for part in out.split(self.size, dim=-1)]

    def data_problem(self, x: Tensor) -> str | None:
        return None


def bernoulli_logits_log_prob(logits: Tensor, value: Tensor, event_dims: int) -> Tensor:
    """``Bernoulli(logits).to_event(event_dims).log_prob(value)`` without building it: the
    elementwise log-density is -BCE-with-logits; the sum over the event is negated once
    (bit-identical to negating each term, one full-size pass cheaper)."""
    if logits.shape != value.shape:
        logits, value = torch.broadcast_tensors(logits, value)
    bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
    return -sum_event(bce, event_dims)


def unit_interval_problem(x: Tensor, name: str) -> str | None:
    if bool(((x < 0) | (x > 1)).any()):
        return f"a {name} likelihood needs values in [0, 1]; rescale the data"
    return None


def create_likelihood(name: str, data_shape: tuple[int, ...], **options) -> Likelihood:
    """Build the likelihood ``name``; options left at ``None`` are not passed.

    Raises ``ValueError`` for an unknown name or an option this likelihood does not take (for
    example ``scale`` applies only to ``gaussian``, ``num_levels`` only to
    ``discretized_logistic``).
    """
    from pyro_genmod._registry import LIKELIHOODS

    if name not in LIKELIHOODS.names():
        raise ValueError(f"unknown likelihood '{name}'; choose one of {LIKELIHOODS.names()}")
    cls = LIKELIHOODS.lookup(name)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "data_shape"}
    for key in options:
        if key not in accepted:
            raise ValueError(f"{key} does not apply to likelihood='{name}' (its options: {sorted(accepted) or 'none'})")
    return cls(data_shape, **options)

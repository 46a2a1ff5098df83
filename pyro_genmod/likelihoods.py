"""Observation models p(x | decoder output), each a small module returning a Pyro distribution."""

from __future__ import annotations

from math import prod

import pyro.distributions as dist
import torch
from torch import Tensor, nn

__all__ = ["Likelihood", "Bernoulli", "Gaussian", "create_likelihood", "LIKELIHOODS"]


class Likelihood(nn.Module):
    """Contract: ``forward(out)`` maps decoder output of shape ``(..., D)`` to a distribution
    with event shape ``data_shape``; ``data_problem(x)`` says why ``x`` is outside its support."""

    name = ""

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.size = prod(self.data_shape)

    def _reshape(self, out: Tensor) -> Tensor:
        return out.reshape(*out.shape[:-1], *self.data_shape)

    def data_problem(self, x: Tensor) -> str | None:
        return None


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder; for binary data."""

    name = "bernoulli"

    def forward(self, out: Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self._reshape(out), validate_args=False).to_event(len(self.data_shape))

    def data_problem(self, x: Tensor) -> str | None:
        if not bool(((x == 0) | (x == 1)).all()):
            return (
                "a Bernoulli likelihood needs values in {0, 1}; load the dataset with "
                "binarize=True, or use likelihood='gaussian'"
            )
        return None


class Gaussian(Likelihood):
    """Independent Normal with mean from the decoder and a fixed (``scale``) or learned
    per-dimension standard deviation."""

    name = "gaussian"

    def __init__(self, data_shape: tuple[int, ...], scale: float | None = None):
        super().__init__(data_shape)
        if scale is None:
            self.log_scale = nn.Parameter(torch.full(self.data_shape, -1.0))
        else:
            if not scale > 0:
                raise ValueError(f"the Gaussian scale must be positive, got {scale}")
            self.register_buffer("log_scale", torch.full(self.data_shape, float(scale)).log())

    def forward(self, out: Tensor) -> dist.Distribution:
        return dist.Normal(self._reshape(out), self.log_scale.exp(), validate_args=False).to_event(
            len(self.data_shape)
        )


LIKELIHOODS = {cls.name: cls for cls in (Bernoulli, Gaussian)}


def create_likelihood(name: str, data_shape: tuple[int, ...], **options) -> Likelihood:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood '{name}'; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](data_shape, **options)

"""Distributions the models share: the standard Normal prior p(z) = N(0, I); ``Independent``'s event sum."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["StandardNormal", "standard_normal", "sum_event"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class StandardNormal(dist.Normal):
    """N(0, 1) with ``batch_shape`` ``shape``: a :class:`pyro.distributions.Normal` (so torch's
    KL registrations, ``TraceMeanField_ELBO``'s closed form and flows see a Normal) whose
    ``log_prob`` is ``-z^2/2 - log sqrt(2 pi)``: the same value as ``Normal(0, 1).log_prob`` in
    three tensor operations instead of seven. It sits in every training step of every model with
    a standard Normal prior, where the operations are small and their count is the cost.

    Arguments:
        shape: the batch shape.
        like: a tensor whose dtype and device the parameters take (a module buffer, say).

    Example:
        >>> p = StandardNormal((3,))
        >>> z = torch.tensor([0.5, -1.0, 2.0])
        >>> torch.allclose(p.log_prob(z), dist.Normal(0.0, 1.0).log_prob(z))
        True
        >>> p.log_prob(torch.tensor(0.0)).shape  # a scalar broadcasts over the batch, as in Normal
        torch.Size([3])
    """

    def __init__(self, shape: Sequence[int] = (), like: Tensor | None = None, validate_args=None):
        like = torch.zeros(()) if like is None else like
        super().__init__(
            like.new_zeros(()).expand(shape), like.new_ones(()).expand(shape), validate_args=validate_args
        )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StandardNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_p = value.square().mul(-0.5).sub(LOG_SQRT_2PI)
        batch = self.batch_shape
        if value.shape[max(0, value.dim() - len(batch)) :] == batch:  # the usual case, checked cheaply
            return log_p
        return log_p.expand(torch.broadcast_shapes(value.shape, batch))


def sum_event(log_p: Tensor, ndims: int) -> Tensor:
    """Sum the rightmost ``ndims`` dimensions: ``Independent``'s reduction, without its reshape."""
    if ndims == 1:
        return log_p.sum(-1)
    return log_p.sum(tuple(range(-ndims, 0))) if ndims else log_p


def standard_normal(event_shape: int | Sequence[int], like: Tensor | None = None) -> dist.Distribution:
    """The prior N(0, I) over vectors (or arrays) of ``event_shape``, as one event, with the
    dtype and device of ``like``.

    The distribution has no learnable parameters, so one object per shape, dtype and device is
    built and reused (a model's ``prior`` runs at every training step).
    """
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    like = torch.zeros(()) if like is None else like
    return _standard_normal(shape, like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _standard_normal(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> dist.Distribution:
    return StandardNormal(shape, torch.zeros((), dtype=dtype, device=device)).to_event(len(shape))

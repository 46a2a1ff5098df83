"""Distributions the models and guides share: the standard Normal prior p(z) = N(0, I), ``Independent``'s
event sum, and reparameterized draws with their log-density (the guide side of the ELBO)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal
from torch.distributions import normal as torch_normal

from .errors import FastPathUnsupported

__all__ = [
    "StandardNormal", "standard_normal", "sum_event", "normal_rsample_with_log_prob", "rsample_with_log_prob",
    "posterior_draws", "add_log_prob",
]

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


_INDEPENDENT = (Independent, dist.Independent)
_NORMAL = (Normal, dist.Normal)


def add_log_prob(total: Tensor | float, log_p: Tensor) -> Tensor:
    """``total + log_p``, where a float total is the empty sum 0.0 (no extra graph node)."""
    return log_p if isinstance(total, float) else total + log_p


def normal_rsample_with_log_prob(loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """z = loc + eps * scale with eps ~ N(0, 1), and log N(z; loc, scale) elementwise.

    The log-density is written in the standard draw eps: ``-eps^2/2 - log scale - log sqrt(2 pi)``.
    That is the same function of (loc, scale) as ``Normal(loc, scale).log_prob(loc + eps * scale)``,
    so the value and the gradient are the same (up to float rounding), with four operations
    instead of eight and no ``(z - loc) / scale`` round trip. ``eps`` is drawn by the function
    ``Normal.rsample`` draws with (looked up where it looks it up), so the random stream is the same.
    """
    eps = torch_normal._standard_normal(loc.shape, dtype=loc.dtype, device=loc.device)
    return loc + eps * scale, eps.square().mul(-0.5).sub(scale.log()).sub(LOG_SQRT_2PI)


def rsample_with_log_prob(q: Distribution) -> tuple[Tensor, Tensor]:
    """A reparameterized draw z ~ q and log q(z); a Normal (or an ``Independent`` Normal) goes
    through :func:`normal_rsample_with_log_prob`."""
    base, ndims = (q.base_dist, q.reinterpreted_batch_ndims) if type(q) in _INDEPENDENT else (q, 0)
    if type(base) in _NORMAL:  # loc and scale broadcast to the batch shape by Normal's constructor
        z, log_q = normal_rsample_with_log_prob(base.loc, base.scale)
        return z, sum_event(log_q, ndims)
    z = q.rsample()
    return z, q.log_prob(z)


def posterior_draws(posterior: dict[str, Distribution], x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """One reparameterized draw per point from each site's q(z|x), and log q summed over the
    sites per point; raises :class:`FastPathUnsupported` for a site without ``rsample`` or not
    batched over the points."""
    latents, log_q = {}, 0.0
    for name, q in posterior.items():
        if not q.has_rsample:
            raise FastPathUnsupported(f"site '{name}' is not reparameterized; Trace_ELBO needs its score-function term")
        if q.batch_shape != x.shape[:1]:
            raise FastPathUnsupported(f"guide site '{name}' has batch shape {tuple(q.batch_shape)}, not (N,)")
        latents[name], site_log_q = rsample_with_log_prob(q)
        log_q = add_log_prob(log_q, site_log_q)
    return latents, torch.as_tensor(log_q)

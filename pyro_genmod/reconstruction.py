"""Reconstructions x -> q(z|x) -> p(x|z) and decoded paths between two points' codes."""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import as_points, check_positive_int
from .errors import DataError
from .tasks import decode, encode

__all__ = ["interpolate", "reconstruct"]


def reconstruct(model, guide, x: Tensor, *, mean: bool = True, y: Tensor | None = None,
                seed: int | None = None) -> Tensor:
    """E[x' | z] at each point's posterior mean z = E_q[z | x] (``mean=False``: a draw of x'),
    shape ``(N, *data_shape)``: :func:`~pyro_genmod.tasks.decode` of :func:`~pyro_genmod.tasks.encode`.
    ``y`` (label-using models) decodes with those classes."""
    return decode(model, encode(guide, x), mean=mean, y=y, seed=seed)


def interpolate(model, guide, x_a: Tensor, x_b: Tensor, steps: int = 8, *, mean: bool = True,
                seed: int | None = None) -> Tensor:
    """Points decoded along the straight line between the codes of ``x_a`` and ``x_b``.

    ``x_a`` and ``x_b`` are batches of P points each (or one point each, without the batch
    dimension); z(t) = (1 - t) z_a + t z_b at ``steps`` equal steps t = 0, 1/(steps-1), ..., 1,
    decoded as by :func:`reconstruct`. Returns shape ``(P, steps, *data_shape)``: row p runs from
    the reconstruction of ``x_a[p]`` to that of ``x_b[p]``.
    """
    check_positive_int("steps", steps)
    if steps < 2:
        raise DataError(f"steps must be at least 2 (the two endpoints), got {steps}")
    x_a, x_b = as_points(x_a, "x_a"), as_points(x_b, "x_b")
    shape = getattr(guide, "data_shape", None)
    if shape is not None and x_a.ndim == len(shape):  # one point each
        x_a, x_b = x_a.unsqueeze(0), x_b.unsqueeze(0)
    if x_a.shape != x_b.shape:
        raise DataError(f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    z_a, z_b = encode(guide, x_a), encode(guide, x_b)
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device).reshape(1, -1, 1)
    path = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)  # (P, steps, D)
    x = decode(model, path.reshape(-1, path.shape[-1]), mean=mean, seed=seed)
    return x.reshape(x_a.shape[0], steps, *x.shape[1:])

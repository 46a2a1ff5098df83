"""Figures: a learned 2-D density as a heat map beside the data it was trained on."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import DataError
from .importance import log_likelihood

__all__ = ["density_figure", "plot_learned_density"]


def density_figure(
    log_density: Callable[[Tensor], Tensor],
    data: Tensor,
    *,
    bounds: tuple[float, float, float, float] | None = None,
    resolution: int = 120,
    title: str = "learned density",
):
    """A matplotlib figure: a 2-D histogram of ``data`` beside a heat map of ``exp(log_density)``.

    Arguments:
        log_density: maps points of shape ``(M, 2)`` to log-densities of shape ``(M,)``.
        data: points of shape ``(N, 2)``.
        bounds: ``(xmin, xmax, ymin, ymax)``; by default the data range plus a margin.
        resolution: grid points per axis.
        title: title of the density panel.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    data = torch.as_tensor(data, dtype=torch.float32)
    if data.ndim != 2 or data.shape[1] != 2:
        raise DataError(f"density_figure needs points of shape (N, 2), got {tuple(data.shape)}")
    if bounds is None:
        low, high = data.min(0).values.tolist(), data.max(0).values.tolist()
        pad = [0.1 * (h - lo) + 1e-3 for lo, h in zip(low, high)]
        bounds = (low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1])
    xs = torch.linspace(bounds[0], bounds[1], resolution)
    ys = torch.linspace(bounds[2], bounds[3], resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = log_density(grid).exp().reshape(resolution, resolution)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    left.hist2d(
        data[:, 0].numpy(), data[:, 1].numpy(), bins=resolution // 2,
        range=[bounds[:2], bounds[2:]], cmap="viridis",
    )
    left.set_title("data")
    right.imshow(density.numpy(), origin="lower", extent=bounds, aspect="auto", cmap="viridis")
    right.set_title(title)
    for ax in (left, right):
        ax.set_xlim(bounds[:2]), ax.set_ylim(bounds[2:])
    fig.tight_layout()
    return fig


def plot_learned_density(
    model, guide, data: Tensor, path: str | os.PathLike | None = None, *, num_samples: int = 64,
    resolution: int = 120, seed: int = 0,
):
    """Heat map of a trained model's importance-sampled density p(x) beside ``data``.

    The density on the grid is :func:`pyro_genmod.log_likelihood` with ``guide`` as proposal
    and ``num_samples`` draws per grid point. Saves the figure to ``path`` when given.
    """

    def log_density(points: Tensor) -> Tensor:
        return log_likelihood(model, guide, points, num_samples, seed=seed, khat=False).per_point

    title = f"learned p(x) ({getattr(model, 'registry_name', 'model')}, IS K={num_samples})"
    fig = density_figure(log_density, data, resolution=resolution, title=title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig

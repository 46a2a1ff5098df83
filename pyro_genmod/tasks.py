"""Sampling new points from p(z) p(x|z), and encoding points with q(z|x)."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch import Tensor

from .train import check_positive_int

__all__ = ["sample", "encode"]


def sample(
    model, num_samples: int, *, mean: bool = False, seed: int | None = None, y: Tensor | None = None
) -> Tensor:
    """Draw ``num_samples`` new points x ~ p(z) p(x|z), shape ``(n, *model.data_shape)``.

    With ``mean=True`` return E[x | z] for each prior draw z instead of a draw of x (the
    usual way to show image samples: pixel probabilities rather than noisy binary pixels).
    For a label-using model (``cvae``, ``m2``), ``y`` (shape ``(n,)``) asks for those classes.
    """
    check_positive_int("the number of samples", num_samples)
    labels = {} if y is None else {"y": y}
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        if seed is not None:
            torch.manual_seed(seed)
        trace = poutine.trace(model).get_trace(num_samples=num_samples, **labels)
    site = trace.nodes["x"]
    return site["fn"].mean if mean else site["value"]


def encode(guide, x: Tensor, *, num_samples: int | None = None, mc_samples: int = 256) -> Tensor:
    """Represent points by q(z|x): the posterior mean, shape ``(N, D)``.

    All latent sites are flattened and concatenated in declaration order (D is their total
    size). With ``num_samples=S`` return S posterior draws instead, shape ``(S, N, D)``. Where
    a family has no closed-form mean (flows, transformed supports) the mean is estimated from
    ``mc_samples`` draws.
    """
    names = [site.name for site in guide.latent_sites]

    def draws(count: int) -> Tensor:
        with torch.no_grad(), poutine.block(), pyro.plate("particles", count, dim=-2):
            trace = poutine.trace(guide).get_trace(x)
        parts = [trace.nodes[n]["value"].expand(count, x.shape[0], *trace.nodes[n]["value"].shape[2:]) for n in names]
        return torch.cat([p.reshape(count, x.shape[0], -1).to(torch.get_default_dtype()) for p in parts], dim=-1)

    if num_samples is not None:
        check_positive_int("num_samples", num_samples)
        return draws(num_samples)
    try:
        with torch.no_grad():
            posterior = guide.posterior(x)
            means = [posterior[n].mean.reshape(x.shape[0], -1) for n in names]
        return torch.cat(means, dim=-1)
    except NotImplementedError:
        return draws(mc_samples).mean(dim=0)

"""Sampling new points from p(z) p(x|z), and encoding points with q(z|x)."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch import Tensor

from .checks import as_points, check_points, check_positive_int
from .datasets.base import Dataset
from .errors import ConfigError, DataError
from .programs import as_guide, as_model
from .seeding import check_seed, seeded

__all__ = ["encode", "sample", "sampled_dataset"]


def sample(
    model, num_samples: int, *, mean: bool = False, seed: int | None = None, y: Tensor | None = None
) -> Tensor:
    """Draw ``num_samples`` new points x ~ p(z) p(x|z), shape ``(n, *model.data_shape)``.

    With ``mean=True`` return E[x | z] for each prior draw z instead of a draw of x (the
    usual way to show image samples: pixel probabilities rather than noisy binary pixels).
    For a label-using model (``cvae``, ``m2``), ``y`` (shape ``(n,)``) asks for those classes.
    """
    check_positive_int("the number of samples", num_samples)
    check_seed(seed)
    model = as_model(model)
    if getattr(model, "is_program", False):
        if y is not None:
            raise ConfigError(f"model '{model.registry_name}' is a Pyro program called as model(x); it takes no labels y")
        with seeded(seed), torch.no_grad(), poutine.block():
            return model.sample_points(num_samples, mean=mean)
    labels = {} if y is None else {"y": y}
    with seeded(seed), torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(num_samples=num_samples, **labels)
    site = trace.nodes["x"]
    return site["fn"].mean if mean else site["value"]


def _categories(site) -> int | None:
    """Number of classes of a discrete ``integer_interval(0, C-1)`` site, else ``None``."""
    support = site.support
    if site.discrete and hasattr(support, "upper_bound") and getattr(support, "lower_bound", None) == 0:
        return int(support.upper_bound) + 1
    return None


def encode(guide, x: Tensor, *, num_samples: int | None = None, mc_samples: int = 256) -> Tensor:
    """Represent points by q(z|x): the posterior mean, shape ``(N, D)``.

    All latent sites are flattened and concatenated in declaration order. A continuous site
    contributes its mean (D counts its scalars); a discrete site with C classes contributes its
    C class probabilities q(k|x). With ``num_samples=S`` return S posterior draws instead, shape
    ``(S, N, D)``, discrete sites as their sampled class index. Where a family has no
    closed-form mean (flows, transformed supports) the mean is estimated from ``mc_samples``
    draws. A guide that defines ``representation(x)`` returns its own, documented there
    (``forward_process``: the diffusion model's DDIM latent, shape ``(N, D)``).

    ``x`` is a tensor (or numpy array) of points of the guide's point shape, converted to
    torch's default float dtype (see :func:`~pyro_genmod.checks.as_points`); a list, an empty
    batch, NaN or inf values, or points of another shape are refused with a :class:`DataError`.
    """
    guide = as_guide(guide)
    x = as_points(x)
    name, shape = getattr(guide, "registry_name", type(guide).__name__), getattr(guide, "data_shape", None)
    if shape is not None and x.ndim >= 1 and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(
            f"x has point shape {tuple(x.shape[1:])} but guide '{name}' was built for points of shape "
            f"{tuple(shape)}; pass a batch of such points, shape (N, {', '.join(map(str, shape))})"
        )
    check_points(x, tuple(x.shape[1:]), name, "x")
    if num_samples is not None:
        check_positive_int("num_samples", num_samples)
    check_positive_int("mc_samples", mc_samples)
    n = x.shape[0]
    if num_samples is None and callable(getattr(guide, "representation", None)):
        with torch.no_grad():  # a guide's own documented representation (forward_process: the DDIM latent)
            return guide.representation(x)

    def draws(count: int, one_hot: bool = False) -> Tensor:
        with torch.no_grad(), poutine.block(), pyro.plate("particles", count, dim=-2):
            trace = poutine.trace(guide).get_trace(x)
        parts = []
        for site in guide.latent_sites:
            value = trace.nodes[site.name]["value"]
            value = value.expand(count, n, *value.shape[2:]).reshape(count, n, -1)
            classes = _categories(site)
            if one_hot and classes is not None:
                value = torch.nn.functional.one_hot(value.long().squeeze(-1), classes)
            parts.append(value.to(torch.get_default_dtype()))
        return torch.cat(parts, dim=-1)

    if num_samples is not None:
        return draws(num_samples)
    try:
        with torch.no_grad():
            posterior = guide.posterior(x)
            means = []
            for site in guide.latent_sites:
                q = posterior[site.name]
                if _categories(site) is not None:
                    means.append(q.probs.reshape(n, -1))
                else:
                    means.append(q.mean.reshape(n, -1))
        return torch.cat(means, dim=-1)
    except (NotImplementedError, AttributeError):
        return draws(mc_samples, one_hot=True).mean(dim=0)


def sampled_dataset(model, num_train: int, num_val: int, num_test: int, seed: int = 0) -> Dataset:
    """Train, validation and test sets drawn from ``model``'s p(x) with a fixed seed.

    Useful to check a trainer against the known parameters that generated the data.
    """
    x = sample(model, num_train + num_val + num_test, seed=seed).detach()
    train, val, test = torch.split(x, [num_train, num_val, num_test])
    name = f"sampled_{getattr(model, 'registry_name', 'model')}"
    return Dataset(name=name, train=train, val=val, test=test, options={"seed": seed})

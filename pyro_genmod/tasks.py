"""Sampling new points from p(z) p(x|z) (or an ex-post sampler), encoding with q(z|x), decoding codes."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import constraints

from ._registry import _check_options
from .checks import as_points, check_points, check_positive_int
from .datasets.base import Dataset
from .errors import ConfigError, DataError
from .programs import as_guide, as_model
from .samplers.base import SAMPLERS, LatentSampler, list_samplers
from .seeding import check_seed, seeded

__all__ = ["decode", "encode", "fit_sampler", "sample", "sampled_dataset"]


def sample(
    model, num_samples: int, *, mean: bool = False, seed: int | None = None, y: Tensor | None = None,
    sampler: str | LatentSampler = "prior", guide=None, data=None,
) -> Tensor:
    """Draw ``num_samples`` new points x ~ p(z) p(x|z), shape ``(n, *model.data_shape)``.

    With ``mean=True`` return E[x | z] for each prior draw z instead of a draw of x (the
    usual way to show image samples: pixel probabilities rather than noisy binary pixels).
    For a label-using model (``cvae``, ``m2``), ``y`` (shape ``(n,)``) asks for those classes.

    ``sampler`` says where z comes from: ``"prior"`` (the default) draws from p(z); a sampler
    fitted by :func:`fit_sampler` draws codes from its density over the training set's posterior
    means and decodes them (:func:`decode`). A sampler's name (``"gmm"``, ``"maf"``,
    ``"two_stage"``) with ``guide`` and ``data`` fits that sampler first (with its defaults and
    ``seed``); fit it once with :func:`fit_sampler` to draw several times.
    """
    check_positive_int("the number of samples", num_samples)
    check_seed(seed)
    model = as_model(model)
    if y is not None and not getattr(model, "uses_labels", False) and not getattr(model, "is_program", False):
        raise ConfigError(f"model '{getattr(model, 'registry_name', 'model')}' takes no labels y; "
                          "only label-using models (cvae, m2) draw given classes")
    if y is not None and callable(getattr(model, "validate_labels", None)):
        model.validate_labels(y, num_samples, "y")  # before tracing: Pyro would append its shape table
    if isinstance(sampler, str) and sampler != "prior":
        if guide is None or data is None:
            known = sampler in list_samplers()
            raise ConfigError(
                f"sampler '{sampler}' is fitted to the training codes: pass guide= and data=, or "
                f"fit it once with pg.fit_sampler('{sampler}', model, guide, data)" if known else
                f"unknown sampler '{sampler}'; choose one of: {', '.join(list_samplers())}"
            )
        sampler = fit_sampler(sampler, model, guide, data, seed=0 if seed is None else seed)
    if isinstance(sampler, LatentSampler):
        sites = {site.name: tuple(site.event_shape) for site in model.latent_sites}
        if sampler.site_shapes and sampler.site_shapes != sites:
            raise ConfigError(f"this sampler was fitted to the latent sites {sampler.site_shapes}, but model "
                              f"'{getattr(model, 'registry_name', 'model')}' has {sites}")
        with seeded(seed):
            return decode(model, sampler.sample(num_samples), mean=mean, y=y)
    if sampler != "prior":
        raise ConfigError(f"sampler must be a name ({', '.join(list_samplers())}) or a fitted sampler "
                          f"from pg.fit_sampler, got {type(sampler).__name__}")
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
    """Number of classes C of a discrete site with support ``integer_interval(0, C-1)``, one
    class per position when wrapped in ``independent`` (``vq_vae``'s codes), else ``None``."""
    support = site.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if site.discrete and hasattr(support, "upper_bound") and getattr(support, "lower_bound", None) == 0:
        return int(support.upper_bound) + 1
    return None


def encode(guide, x: Tensor, *, num_samples: int | None = None, mc_samples: int = 256) -> Tensor:
    """Represent points by q(z|x): the posterior mean, shape ``(N, D)``.

    All latent sites are flattened and concatenated in declaration order. A continuous site
    contributes its mean (D counts its scalars); a discrete site with C classes contributes its
    C class probabilities q(k|x), C per position for a site of P positions (``vq_vae``: P * C). With ``num_samples=S`` return S posterior draws instead, shape
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
                value = torch.nn.functional.one_hot(value.long(), classes).reshape(count, n, -1)
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
                    while isinstance(q, torch.distributions.Independent):  # one class per position
                        q = q.base_dist
                    means.append(q.probs.reshape(n, -1))
                else:
                    means.append(q.mean.reshape(n, -1))
        return torch.cat(means, dim=-1)
    except (NotImplementedError, AttributeError):
        return draws(mc_samples, one_hot=True).mean(dim=0)


def _code_widths(model) -> dict[str, int]:
    """Columns of a flat code (:func:`encode`'s layout) per latent site: C per position for a
    discrete site with C classes (its class probabilities), else the site's number of scalars."""
    return {site.name: (_categories(site) or 1) * site.size if site.discrete else site.size
            for site in model.latent_sites}


def decode(model, z: Tensor, *, mean: bool = True, y: Tensor | None = None, seed: int | None = None) -> Tensor:
    """Points for latent codes: E[x | z] (``mean=True``) or a draw x ~ p(x | z), shape ``(N, *data_shape)``.

    ``z`` has :func:`encode`'s layout, shape ``(N, D)``: every latent site flattened and
    concatenated in declaration order, so ``decode(model, encode(guide, x))`` reconstructs x. A
    discrete site's C columns (class probabilities) are decoded at their most probable class.
    For a label-using model, ``y`` (shape ``(N,)``) gives the classes to decode with; without it
    the model's own p(x | z) (``cvae``: the mixture over labels) is used.
    """
    model = as_model(model)
    name = getattr(model, "registry_name", "model")
    widths = _code_widths(model)
    z = as_points(z, "z")
    if z.ndim != 2 or z.shape[1] != sum(widths.values()):
        layout = ", ".join(f"'{k}' {w}" for k, w in widths.items())
        raise DataError(
            f"z must be codes of shape (N, {sum(widths.values())}) for model '{name}' (columns: {layout}), "
            f"got {tuple(z.shape)}"
        )
    check_points(z, (z.shape[1],), name, "z")
    if y is not None and not getattr(model, "uses_labels", False):
        raise ConfigError(f"model '{name}' takes no labels y; only label-using models (cvae, m2) decode given classes")
    if y is not None and callable(getattr(model, "validate_labels", None)):
        model.validate_labels(y, z.shape[0], "y")
    param = next(iter(model.parameters()), None)
    if param is not None:
        z = z.to(param.device)
    latents, start = {}, 0
    for site in model.latent_sites:
        part = z[:, start : start + widths[site.name]]
        start += widths[site.name]
        if site.discrete:  # the most probable class at each position
            latents[site.name] = part.reshape(z.shape[0], *site.event_shape, -1).argmax(-1)
        else:
            latents[site.name] = part.reshape(z.shape[0], *site.event_shape)
    with seeded(seed), torch.no_grad(), poutine.block():
        if getattr(model, "is_program", False):
            return model.decode({k: v.unsqueeze(0) for k, v in latents.items()}, mean=mean)[0]
        labels = {} if y is None else {"y": y}
        trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(num_samples=z.shape[0], **labels)
    site = trace.nodes["x"]
    return site["fn"].mean if mean else site["value"]


def fit_sampler(sampler: str, model, guide, data, *, seed: int = 0, **options) -> LatentSampler:
    """Fit the ex-post sampler ``sampler`` (``gmm``, ``maf``, ``two_stage``) to the training codes.

    The codes are the posterior means :func:`encode` gives for ``data`` (a dataset: its training
    split, one Bernoulli draw of it under dynamic binarization, as training sees it; or a tensor of
    points). ``options`` go to the sampler (see its class: ``num_components`` for ``gmm``,
    ``num_flows`` and ``epochs`` for ``maf``, ...). Pass the result to :func:`sample` as
    ``sampler=``. Models with a discrete latent site (``m2``) are refused: a density over class
    probabilities does not decode to classes.
    """
    check_seed(seed)
    if not isinstance(sampler, str):
        raise ConfigError(f"sampler must be a name ({', '.join(SAMPLERS.names())}), got {type(sampler).__name__}")
    if sampler == "prior":
        raise ConfigError("sampler 'prior' is p(z) itself and has nothing to fit; pass sampler='prior' to pg.sample")
    cls = SAMPLERS.lookup(sampler)
    options = _check_options(cls, "sampler", sampler, options, skip=0)
    model = as_model(model, data)
    guide = as_guide(guide, model, data)
    name = getattr(model, "registry_name", "model")
    discrete = [site.name for site in model.latent_sites if site.discrete]
    if discrete:
        raise ConfigError(
            f"sampler '{sampler}' fits continuous codes; model '{name}' has the discrete latent site(s) "
            f"{', '.join(discrete)} (use sampler='prior', or y= to choose classes)"
        )
    if isinstance(data, Dataset):
        with seeded(seed):
            x = data.training_batch(data.train)
    else:
        x = as_points(data, "data")
    codes = encode(guide, x)
    width = sum(site.size for site in model.latent_sites)
    if codes.ndim != 2 or codes.shape[1] != width:
        raise ConfigError(
            f"guide '{getattr(guide, 'registry_name', 'guide')}' encodes points as {tuple(codes.shape[1:])} "
            f"features, not the {width} latent values of model '{name}'; an ex-post sampler needs codes "
            "that decode through the model's latent sites"
        )
    with seeded(seed):
        fitted = cls(**options).fit(codes.cpu())
    fitted.site_shapes = {site.name: tuple(site.event_shape) for site in model.latent_sites}
    return fitted


def sampled_dataset(model, num_train: int, num_val: int, num_test: int, seed: int = 0) -> Dataset:
    """Train, validation and test sets drawn from ``model``'s p(x) with a fixed seed.

    Useful to check a trainer against the known parameters that generated the data.
    """
    x = sample(model, num_train + num_val + num_test, seed=seed).detach()
    train, val, test = torch.split(x, [num_train, num_val, num_test])
    name = f"sampled_{getattr(model, 'registry_name', 'model')}"
    return Dataset(name=name, train=train, val=val, test=test, options={"seed": seed})

"""Build models and guides by name: the zoo's registered ones, or a user's Pyro programs."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._registry import GUIDES, MODELS, _check_options, _declared_parameters
from .checks import built_within_memory
from .datasets import Dataset
from .errors import ConfigError, PairingError
from .latents import check_pair
from .programs import as_model, guide_from_source, is_source, program_from_source

__all__ = ["create_model", "create_guide", "pairing_problem", "likelihood_for", "default_guide", "fitting_guides"]

DEFAULT_GUIDE = "mean_field"


def default_guide(model_name: str) -> str:
    """The guide model ``model_name`` gets when none is chosen: the model's ``default_guide``
    (``m2`` for ``m2``, whose latent sites only its own guide covers), else ``mean_field``."""
    if is_source(model_name):
        return DEFAULT_GUIDE
    return getattr(MODELS.lookup(model_name), "default_guide", None) or DEFAULT_GUIDE


def fitting_guides(model) -> list[str]:
    """Names of the registered guides that can be built for ``model``."""
    return [name for name in GUIDES.names() if pairing_problem(name, model) is None]


def _binary(x) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def likelihood_for(name: str, data) -> tuple[str, str] | None:
    """The likelihood model ``name`` gets for ``data`` when none is chosen, and why, if it is not
    the model's declared default (``None`` otherwise, and for models without a ``likelihood``
    option or ``data`` that is not a :class:`Dataset`).

    The likelihood follows the data: ``bernoulli`` for data binarized dynamically or made of 0s
    and 1s only, ``gaussian`` for any other real values (scikit-learn's tabular sets, the toy
    2-D sets, a real-valued file, grey levels kept with ``binarize=false``).
    """
    if is_source(name) or not isinstance(data, Dataset):
        return None
    declared, _ = _declared_parameters(MODELS.lookup(name), 1)
    if "likelihood" not in declared:
        return None
    if data.binarization == "dynamic":
        chosen, why = "bernoulli", f"dataset '{data.name}' is binarized dynamically"
    elif all(_binary(x) for x in (data.train, data.val, data.test)):
        chosen, why = "bernoulli", f"dataset '{data.name}' holds only 0s and 1s"
    else:
        chosen, why = "gaussian", f"dataset '{data.name}' holds real values, not only 0s and 1s"
    return None if chosen == declared["likelihood"].default else (chosen, why)


def _point_shape(name: str, data) -> tuple[int, ...]:
    """The shape of one point: a :class:`Dataset`'s, or ``data`` itself as a tuple of positive
    ints. A tensor or array is refused: its shape includes the number of points, and a model
    built for it would silently expect points of the whole set's shape."""
    if isinstance(data, Dataset):
        return data.shape
    if isinstance(data, (torch.Tensor, np.ndarray)):
        raise ConfigError(
            f"create_model('{name}', data) got a {type(data).__name__} of shape {tuple(data.shape)}; pass a "
            f"Dataset or the shape of one point, e.g. create_model('{name}', x.shape[1:]) for points x"
        )
    if isinstance(data, (tuple, list)) and data and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in data
    ):
        return tuple(int(d) for d in data)
    raise ConfigError(
        f"create_model('{name}', data) needs a Dataset or the shape of one point as a tuple of positive "
        f"integers, e.g. (1, 28, 28), got {data!r}"
    )


def create_model(name: str, data, **kwargs):
    """Build the registered model ``name`` for ``data``: a :class:`Dataset`, or the shape of one
    point as a tuple of positive integers. A tensor of points is refused with a
    :class:`ConfigError` (pass ``x.shape[1:]``): its shape counts the points too.

    Example:
        >>> import pyro_genmod as pg
        >>> model = pg.create_model("vae", (1, 8, 8), latent_dim=4)
        >>> [site.name for site in model.latent_sites]
        ['z']

    Without a ``likelihood`` option the likelihood follows a :class:`Dataset` ``data``:
    ``bernoulli`` for binary or dynamically binarized data, ``gaussian`` for other real values
    (see :func:`likelihood_for`); it is recorded in ``model.init_kwargs``. Given a shape, the
    model's own default applies (``bernoulli`` for the VAE family).

    ``name`` may also point at a user's Pyro program, ``path/to/file.py:attribute`` or
    ``module:attribute`` (the file is executed afresh for each model built from it, so each
    starts from its own initial parameters); ``data`` must then hold points to trace it on, and
    the only option is ``data_plate``. See :mod:`pyro_genmod.programs`.
    """
    if is_source(name):
        return program_from_source(name, data, **kwargs)
    cls = MODELS.lookup(name)
    shape = _point_shape(name, data)
    kwargs = _check_options(cls, "model", name, kwargs, skip=1)
    if "likelihood" not in kwargs and (chosen := likelihood_for(name, data)) is not None:
        kwargs["likelihood"] = chosen[0]
    try:  # its parameters are counted on the meta device first: too many for the memory are refused
        model = built_within_memory(lambda: cls(shape, **kwargs), f"model '{name}'", "choose smaller model options")
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model '{name}': {error}") from None
    model.init_kwargs = dict(kwargs)
    return model


def pairing_problem(guide_name: str, model) -> str | None:
    """Why guide ``guide_name`` cannot be built for ``model``, or ``None`` when it can."""
    cls = GUIDES.lookup(guide_name)
    declared = getattr(model, "guide_problem", None)  # the model's own restriction (supported_guides)
    return (declared(guide_name) if callable(declared) else None) or cls.unsupported_reason(model)


def create_guide(name: str, model, data=None, **kwargs):
    """Build the registered guide ``name`` (a variational family q(z|x)) for ``model``.

    ``model`` may be a plain Pyro program; ``data`` (a dataset or a tensor of points) is then
    used to trace it the first time (its latent sites are what the guide covers).
    Raises :class:`PairingError` naming the latent site and what differs when the family cannot
    cover the model's latent sites.
    """
    model = as_model(model, data)
    if is_source(name):
        return guide_from_source(name, model, data, **kwargs)
    cls = GUIDES.lookup(name)
    reason = pairing_problem(name, model)
    if reason is not None:
        model_name = getattr(model, "registry_name", type(model).__name__)
        fitting = fitting_guides(model)
        choose = f"; choose a guide that fits it: {', '.join(fitting)}" if fitting else "; no registered guide fits it"
        raise PairingError(f"guide '{name}' does not fit model '{model_name}': {reason}{choose}")
    kwargs = _check_options(cls, "guide", name, kwargs, skip=1)
    try:
        guide = cls(model, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"guide '{name}': {error}") from None
    guide.init_kwargs = dict(kwargs)
    check_pair(model, guide)
    return guide

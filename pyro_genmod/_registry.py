"""Registries of models, guides and datasets, and the factories that build from them.

A model or guide registers itself with a decorator in its own file; files in ``models/`` and
``guides/`` are discovered on first use, so adding one is adding one file.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import pkgutil
from typing import Any

from .errors import ConfigError, PairingError, UnknownNameError
from .latents import check_pair

__all__ = [
    "Registry",
    "MODELS", "GUIDES", "DATASETS", "OBJECTIVES", "LIKELIHOODS",
    "register_model",
    "register_objective",
    "register_likelihood",
    "register_guide",
    "register_dataset",
    "create_model",
    "create_guide",
    "list_models",
    "list_guides",
    "list_datasets",
    "pairing_problem",
    "summary_line",
]

class Registry:
    """Named entries of one extensible kind, each registered by a decorator in its own file.

    The files of ``package`` are imported on first use, so adding an entry is adding a file to
    that folder: ``models/``, ``guides/``, ``pyro_genmod/datasets/``, ``pyro_genmod/objectives/``
    or ``pyro_genmod/likelihoods/`` (files starting with ``_`` and ``base.py`` hold shared code).
    """

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self.table: dict[str, Any] = {}
        self._discovered = False

    def register(self, name: str):
        def decorator(obj):
            if name in self.table and self.table[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self.table[name]} and {obj})")
            self.table[name] = obj
            if isinstance(obj, type):
                obj.registry_name = name
            return obj

        return decorator

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{self.package}.{info.name}")

    def lookup(self, name: str):
        self.discover()
        if name not in self.table:
            raise UnknownNameError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self.table))}")
        return self.table[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self.table)


MODELS = Registry("model", "pyro_genmod.models")
GUIDES = Registry("guide", "pyro_genmod.guides")
DATASETS = Registry("dataset", "pyro_genmod.datasets")
OBJECTIVES = Registry("objective", "pyro_genmod.objectives")
LIKELIHOODS = Registry("likelihood", "pyro_genmod.likelihoods")
_KINDS = {r.kind: r for r in (MODELS, GUIDES, DATASETS, OBJECTIVES, LIKELIHOODS)}
_MODELS, _GUIDES, _DATASETS = MODELS.table, GUIDES.table, DATASETS.table


def register_model(name: str):
    """Class decorator: make a :class:`GenerativeModel` subclass available as ``name``."""
    return MODELS.register(name)


def register_guide(name: str):
    """Class decorator: make a guide class available as ``name``."""
    return GUIDES.register(name)


def register_dataset(name: str):
    """Function decorator: register a loader ``fn(**options) -> Dataset``."""
    return DATASETS.register(name)


def register_objective(name: str):
    """Class decorator: make an :class:`~pyro_genmod.objectives.base.Objective` available as ``name``."""
    return OBJECTIVES.register(name)


def register_likelihood(name: str):
    """Class decorator: make a :class:`~pyro_genmod.likelihoods.base.Likelihood` available as ``name``."""
    return LIKELIHOODS.register(name)


def _lookup(table: dict, kind: str, name: str):
    return _KINDS[kind].lookup(name)


def _check_options(obj, kind: str, name: str, kwargs: dict[str, Any], skip: int) -> None:
    params = list(inspect.signature(obj).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = {p.name for p in params}
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"{kind} '{name}' has no option '{key}'; its options are: "
                f"{', '.join(sorted(allowed)) or 'none'}"
            )
    defaults = {p.name: p.default for p in params}
    for key, value in kwargs.items():
        default = defaults[key]
        numeric = isinstance(default, numbers.Real) and not isinstance(default, bool)
        if numeric and not isinstance(value, numbers.Real):
            raise ConfigError(f"{kind} '{name}' option '{key}' must be a number, got {value!r}")


def list_models() -> list[str]:
    """Names of all registered models."""
    return MODELS.names()


def list_guides() -> list[str]:
    """Names of all registered guides."""
    return GUIDES.names()


def list_datasets() -> list[str]:
    """Names of all registered datasets."""
    return DATASETS.names()


def summary_line(kind: str, name: str) -> str:
    """First line of a registered entry's docstring."""
    doc = inspect.getdoc(_KINDS[kind].lookup(name)) or ""
    return doc.splitlines()[0] if doc else ""


def create_model(name: str, data, **kwargs):
    """Build the registered model ``name`` for ``data`` (a :class:`Dataset` or an event shape).

    Example:
        >>> import pyro_genmod as pg
        >>> model = pg.create_model("vae", (1, 8, 8), latent_dim=4)
        >>> [site.name for site in model.latent_sites]
        ['z']

    ``name`` may also point at a user's Pyro program, ``path/to/file.py:attribute`` or
    ``module:attribute`` (the file is executed afresh for each model built from it, so each
    starts from its own initial parameters); ``data`` must then hold points to trace it on, and
    the only option is ``data_plate``. See :mod:`pyro_genmod.programs`.
    """
    from .programs import program_from_source, is_source

    if is_source(name):
        return program_from_source(name, data, **kwargs)
    cls = _lookup(_MODELS, "model", name)
    shape = tuple(getattr(data, "shape", data))
    _check_options(cls, "model", name, kwargs, skip=1)
    try:
        model = cls(shape, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model '{name}': {error}") from None
    model.init_kwargs = dict(kwargs)
    return model


def pairing_problem(guide_name: str, model) -> str | None:
    """Why guide ``guide_name`` cannot be built for ``model``, or ``None`` when it can."""
    cls = _lookup(_GUIDES, "guide", guide_name)
    return cls.unsupported_reason(model)


def create_guide(name: str, model, data=None, **kwargs):
    """Build the registered guide ``name`` (a variational family q(z|x)) for ``model``.

    ``model`` may be a plain Pyro program; ``data`` (a dataset or a tensor of points) is then
    used to trace it the first time (its latent sites are what the guide covers).
    Raises :class:`PairingError` naming the latent site and what differs when the family cannot
    cover the model's latent sites.
    """
    from .programs import as_model, guide_from_source, is_source

    model = as_model(model, data)
    if is_source(name):
        return guide_from_source(name, model, data, **kwargs)
    cls = _lookup(_GUIDES, "guide", name)
    reason = cls.unsupported_reason(model)
    if reason is not None:
        model_name = getattr(model, "registry_name", type(model).__name__)
        raise PairingError(f"guide '{name}' does not fit model '{model_name}': {reason}")
    _check_options(cls, "guide", name, kwargs, skip=1)
    try:
        guide = cls(model, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"guide '{name}': {error}") from None
    guide.init_kwargs = dict(kwargs)
    check_pair(model, guide)
    return guide


def dataset_loader(name: str):
    """The function registered for dataset ``name``."""
    return _lookup(_DATASETS, "dataset", name)


def load_registered_dataset(name: str, **kwargs):
    loader = _lookup(_DATASETS, "dataset", name)
    _check_options(loader, "dataset", name, kwargs, skip=0)
    return loader(**kwargs)

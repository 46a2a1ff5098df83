"""Registries of every extensible kind: models, guides, datasets, objectives and likelihoods.

A model or guide registers itself with a decorator in its own file; files in ``models/`` and
``guides/`` are discovered on first use, so adding one is adding one file.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import pkgutil
from typing import Any

from .errors import ConfigError, UnknownNameError

__all__ = [
    "Registry",
    "MODELS", "GUIDES", "DATASETS", "OBJECTIVES", "LIKELIHOODS",
    "register_model",
    "register_objective",
    "register_likelihood",
    "register_guide",
    "register_dataset",
    "list_models",
    "list_guides",
    "list_datasets",
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


def dataset_loader(name: str):
    """The function registered for dataset ``name``."""
    return _lookup(_DATASETS, "dataset", name)


def load_registered_dataset(name: str, **kwargs):
    loader = _lookup(_DATASETS, "dataset", name)
    _check_options(loader, "dataset", name, kwargs, skip=0)
    return loader(**kwargs)

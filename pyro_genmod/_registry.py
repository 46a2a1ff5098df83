"""Registries of every extensible kind: models, guides, datasets, objectives and likelihoods.

A model or guide registers itself with a decorator in its own file; files in ``models/`` and
``guides/`` are discovered on first use, so adding one is adding one file.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import os
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


_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}
_SCALARS = {"bool", "int", "float", "str", "None"}
_SEQUENCES = ("Sequence", "list", "tuple", "typing.Sequence", "collections.abc.Sequence")


def _split_union(text: str) -> list[str]:
    """``"int | None"`` -> ``["int", "None"]``, splitting at ``|`` outside brackets only."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def _declared_kinds(param: inspect.Parameter) -> set[str] | None:
    """The kinds an option may take, from its annotation or else its default: a subset of
    ``bool int float str None sequence``; ``None`` when the declaration says nothing checkable
    (an annotation naming another type, or no annotation and no telling default)."""
    annotation, default = param.annotation, param.default
    kinds: set[str] = set()
    if annotation is not inspect.Parameter.empty:
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        for part in _split_union(str(text)):
            part = "None" if part in ("NoneType", "type(None)") else part
            if part in _SCALARS:
                kinds.add(part)
            elif part.split("[")[0] in _SEQUENCES:
                kinds.add("sequence")
            else:
                return None
    elif isinstance(default, bool):
        kinds.add("bool")
    elif isinstance(default, numbers.Integral):
        kinds.add("int")
    elif isinstance(default, numbers.Real):
        kinds.add("float")
    elif isinstance(default, str):
        kinds.add("str")
    elif isinstance(default, (list, tuple)):
        kinds.add("sequence")
    else:
        return None
    if default is None:
        kinds.add("None")
    return kinds


def _coerce(value, kinds: set[str]):
    """``value`` as one of ``kinds`` (``"no"`` -> ``False``, ``2.0`` -> ``2``), or raise ``TypeError``
    saying what was expected and how to write it."""
    if value is None and "None" in kinds:
        return None
    if "bool" in kinds:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE | {"1", "0"}:
            return value.strip().lower() in _TRUE | {"1"}
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if "float" in kinds and number:
        return value
    if "int" in kinds and number and (isinstance(value, numbers.Integral) or float(value).is_integer()):
        return int(value)
    if "str" in kinds and isinstance(value, (str, os.PathLike)):
        return value
    if "sequence" in kinds and isinstance(value, (list, tuple)):
        return value
    if "bool" in kinds:
        raise TypeError("must be true or false", "write {key}=true or {key}=false (yes/no and on/off work too)")
    if "int" in kinds and (number or isinstance(value, bool)):
        raise TypeError("must be an integer", "write a whole number, e.g. {key}=2")
    if "int" in kinds or "float" in kinds:
        raise TypeError("must be a number", "write a number, e.g. {key}=2")
    if "sequence" in kinds:
        raise TypeError("must be a list", "write a list, e.g. {key}=[64,64]")
    raise TypeError("must be text", "write a name or a path")


def _declared_parameters(obj, skip: int) -> tuple[dict[str, inspect.Parameter], bool]:
    """The named parameters of ``obj`` after the first ``skip`` (for a class, those of
    ``__init__``), and whether it also takes any keyword (``**kwargs``). For a class whose
    ``__init__`` takes ``**kwargs``, the base classes' ``__init__`` parameters are included too
    (a subclass of ``VAE`` passes its remaining options on to ``VAE``), so their types are checked."""
    declared: dict[str, inspect.Parameter] = {}
    if not isinstance(obj, type):
        params = list(inspect.signature(obj).parameters.values())[skip:]
        return {p.name: p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}, any(
            p.kind is p.VAR_KEYWORD for p in params
        )
    open_ = False
    for klass in obj.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        try:
            params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]  # no self
        except (TypeError, ValueError):
            break
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:skip]
        for p in params:
            if p not in positional and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                declared.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
        open_ = True  # it takes more options; the next base class may say what they are
    return declared, open_


def _check_options(obj, kind: str, name: str, kwargs: dict[str, Any], skip: int) -> dict[str, Any]:
    """Check ``kwargs`` against the options ``obj`` declares, and return them with each value
    as its declared type: ``"no"``/``"off"``/``"false"`` (any case) become ``False`` for a bool
    option, ``2.0`` becomes ``2`` for an int one. An unknown option, a bool or a fraction given
    for an int, text for a number, and so on, raise :class:`ConfigError` naming the option."""
    declared, takes_any = _declared_parameters(obj, skip)
    if not takes_any:
        for key in kwargs:
            if key not in declared:
                raise ConfigError(
                    f"{kind} '{name}' has no option '{key}'; its options are: "
                    f"{', '.join(sorted(declared)) or 'none'}"
                )
    checked = dict(kwargs)
    for key, value in kwargs.items():
        kinds = _declared_kinds(declared[key]) if key in declared else None
        if kinds is None:
            continue
        try:
            checked[key] = _coerce(value, kinds)
        except TypeError as problem:
            expected, fix = problem.args
            raise ConfigError(
                f"{kind} '{name}' option '{key}' {expected}, got {value!r}; {fix.format(key=key)}"
            ) from None
    return checked


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
    return loader(**_check_options(loader, "dataset", name, kwargs, skip=0))

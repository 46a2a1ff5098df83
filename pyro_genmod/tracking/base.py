"""What every logger shares: the registry, the base class, the context a run gives its loggers."""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .._registry import Registry
from ..callbacks import Callback, FitEnd
from ..errors import ConfigError

__all__ = ["LOGGERS", "Logger", "RunInfo", "flat_params", "register_logger", "require"]

LOGGERS = Registry("logger", "pyro_genmod.tracking")
register_logger = LOGGERS.register


def require(module: str, extra: str, what: str):
    """Import ``module`` (an optional dependency) or raise the one-line :class:`ConfigError` that
    names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the {what} logger needs {module.split('.')[0]}, which is not installed: "
            f"pip install \"pyro-genmod[{extra}]\""
        ) from None


@dataclass
class RunInfo:
    """What a run tells its loggers (see :meth:`Logger.for_run`).

    Arguments:
        folder: where the run writes while it trains (its run folder, or the staging folder of
            a replacement): the loggers' files go there.
        name: the run's name (the folder's name, or a grid cell's id).
        params: the run's configuration (nested dicts: model, guide, dataset, fit options).
        tags: labels of the run (dataset, model, guide, objective, seed).
        experiment: the experiment the run belongs to (MLflow's experiment name).
        store: the folder under which a tracking store shared by runs is created by default
            (the run folder itself, or a grid's runs folder); defaults to ``folder``.
        every_n_steps: optimizer steps between two step-level records (loss, lr, gradient norm).
    """

    folder: Path
    name: str
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    experiment: str = "genmod"
    store: Path | None = None
    every_n_steps: int | None = 50


class Logger(Callback):
    """A :class:`~pyro_genmod.callbacks.Callback` that records a fit somewhere.

    The hooks record as training goes; :meth:`finish` closes the record (files flushed, the run
    marked finished). By default ``on_fit_end`` calls it; a caller that saves the run folder
    after ``fit`` (``run_experiment``, the bench) sets ``hold_open = True`` and calls
    ``finish(saved=folder)`` once the folder is written, so the saved files can be recorded.

    A new logger is one file in ``pyro_genmod/tracking/`` defining a subclass registered with
    ``@register_logger("name")``; :meth:`check_installed` names the extra it needs.
    """

    name = "logger"
    extra: str | None = None  # the optional dependency group that installs its engine
    module: str | None = None  # the module it imports from that group

    def __init__(self, folder, *, every_n_steps: int | None = 50):
        self.folder = Path(folder)
        self.every_n_steps = every_n_steps
        self.hold_open = False
        self.fit_error: BaseException | None = None
        self.check_installed()

    @classmethod
    def check_installed(cls) -> None:
        """Raise the one-line :class:`ConfigError` naming the extra when the engine is missing."""
        if cls.module is not None:
            require(cls.module, cls.extra or cls.name, cls.name)

    @classmethod
    def for_run(cls, run: RunInfo) -> Logger:
        """The logger a run folder gets (``genmod train --logger``, a bench config's ``logger``)."""
        return cls(run.folder)

    def on_fit_end(self, event: FitEnd) -> None:
        self.fit_error = event.error
        if not self.hold_open:
            self.finish(error=event.error)

    def finish(self, error: BaseException | None = None, saved: Path | None = None) -> None:
        """Close the record: ``error`` stopped the run (or ``None``); ``saved`` is the finished
        run folder, when one was written."""


def flat_params(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested options as flat ``a.b.c`` keys with string values (lists as JSON)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, name + "."))
        elif isinstance(value, float) and not math.isfinite(value):
            flat[name] = str(value)
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat

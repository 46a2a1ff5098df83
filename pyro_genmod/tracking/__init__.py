"""Experiment tracking: loggers built on :func:`~pyro_genmod.train.fit`'s callbacks.

- ``tensorboard`` (:class:`TensorBoardLogger`): scalars and image grids of samples and
  reconstructions, read by TensorBoard (``pip install "pyro-genmod[tensorboard]"``);
- ``mlflow`` (:class:`MLflowLogger`): parameters, metrics and the run folder's files in an
  MLflow run, a local file store by default (``pip install "pyro-genmod[mlflow]"``);
- ``csv`` (:class:`CSVLogger`): ``history.csv`` written at every epoch's end.

Each logger is one file here, registered by name; ``genmod train --logger NAME`` and a bench
config's ``logger`` key choose them. A resumed run continues their series without repeating or
missing a step.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import LOGGERS, Logger, RunInfo, register_logger
from .csv_logger import CSVLogger
from .mlflow_logger import MLflowLogger
from .tensorboard_logger import TensorBoardLogger

__all__ = [
    "LOGGERS", "CSVLogger", "Logger", "MLflowLogger", "RunInfo", "TensorBoardLogger", "check_logger_names",
    "create_loggers", "list_loggers", "register_logger",
]


def list_loggers() -> list[str]:
    return LOGGERS.names()


def check_logger_names(names, where: str | None = None) -> list[str]:
    """``names`` (a name, a comma-separated list, or a list of those) as a list of known logger
    names whose engines are installed; otherwise one :class:`ConfigError` naming the problem
    (after ``where``, the option or file that gave them)."""
    prefix = f"{where}: " if where else ""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"{prefix}loggers are a name or a list of names ({', '.join(list_loggers())}), got {names!r}"
        )
    chosen: list[str] = []
    for part in (p.strip() for n in names for p in n.split(",")):
        if not part:
            continue
        if part not in LOGGERS.names():
            raise ConfigError(f"{prefix}unknown logger '{part}'; choose from: {', '.join(list_loggers())}")
        LOGGERS.lookup(part).check_installed()
        if part not in chosen:
            chosen.append(part)
    return chosen


def create_loggers(names, run: RunInfo) -> list[Logger]:
    """The loggers ``names`` for a run (see :func:`check_logger_names`), writing into ``run.folder``."""
    run.folder = Path(run.folder)
    return [LOGGERS.lookup(name).for_run(run) for name in check_logger_names(names)]

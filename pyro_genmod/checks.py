"""Argument checks shared by every layer (a leaf module: it imports nothing from the package but errors)."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import ConfigError, DataError

__all__ = ["check_positive_int", "check_points"]


def check_positive_int(name: str, value) -> int:
    """``value`` if it is a positive ``int`` (not a bool), else :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_points(x, data_shape: tuple[int, ...], model_name: str, what: str = "data", observation=None) -> None:
    """Raise :class:`DataError` naming the problem unless ``x`` is a batch of finite points of
    ``data_shape`` that ``observation`` (a likelihood, if given) can score."""
    if not isinstance(x, Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"{what} is empty; pass at least one data point")
    if tuple(x.shape[1:]) != tuple(data_shape):
        raise DataError(
            f"{what} has point shape {tuple(x.shape[1:])} but model '{model_name}' was built for "
            f"{tuple(data_shape)}; rebuild the model for this data with create_model(name, data)"
        )
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise DataError(f"{what} has NaN or inf values, first in row {row}")
    problem = observation.data_problem(x) if observation is not None else None
    if problem:
        raise DataError(f"{what}: {problem}")

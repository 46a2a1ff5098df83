"""Argument checks shared by every layer (a leaf module: it imports nothing from the package but errors)."""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value) -> int:
    """``value`` if it is a positive ``int`` (not a bool), else :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value

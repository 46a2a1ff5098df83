"""Marks on the contracts' default methods (a leaf module).

The log-density engine takes a shortcut for pairs that run the zoo's own programs: a model whose
``forward`` is :class:`~pyro_genmod.models.base.GenerativeModel`'s (prior, then likelihood, in
the data plate) and a guide whose ``forward`` is :class:`~pyro_genmod.guides.base.Guide`'s. The
base classes mark those methods here, so the engine recognizes them without importing the base
classes (which sit above it).
"""

from __future__ import annotations

__all__ = ["contract_default", "is_contract_default"]

_MARK = "_pyro_genmod_contract_default"


def contract_default(method):
    """Mark ``method`` as the contract's default implementation."""
    setattr(method, _MARK, True)
    return method


def is_contract_default(method) -> bool:
    """Whether ``method`` is a contract's default (not overridden by a subclass)."""
    return getattr(method, _MARK, False)

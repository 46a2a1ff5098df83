"""The ``>>>`` examples in docstrings run (on the installed package, not the source tree)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pyro_genmod

MODULES = sorted(
    info.name
    for package in ("pyro_genmod", "pyro_genmod.models", "pyro_genmod.guides")
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, prefix=f"{package}.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_some_examples_exist():
    found = sum(
        len([e for t in doctest.DocTestFinder().find(importlib.import_module(n)) for e in t.examples])
        for n in MODULES
    )
    assert found >= 5, f"only {found} docstring examples"
    assert pyro_genmod.__version__

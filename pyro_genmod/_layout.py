"""Make ``pyro_genmod.models`` and ``pyro_genmod.guides`` importable from a source checkout.

Installed, setuptools' ``package-dir`` maps the repository's top-level ``models/`` and
``guides/`` into the package. When the package is imported straight from a checkout instead
(``python -m pyro_genmod`` or ``python -m pytest`` run in the repository root, whose
``pyro_genmod/`` then shadows the installed copy), they sit beside it; load them from there.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

__all__ = ["attach_sibling_packages"]


def attach_sibling_packages(package: str, names: tuple[str, ...] = ("models", "guides")) -> None:
    root = Path(sys.modules[package].__file__).resolve().parent.parent
    for name in names:
        full = f"{package}.{name}"
        if full in sys.modules or importlib.util.find_spec(full) is not None:
            continue
        init = root / name / "__init__.py"
        if not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location(full, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)

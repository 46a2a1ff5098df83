"""The package's layers (pyproject.toml, [tool.importlinter]) hold, and no import cycle remains.

import-linter reads the package as it is installed: ``models/`` and ``guides/`` become
``pyro_genmod.models`` and ``pyro_genmod.guides``. So the check runs on a copy of the source laid
out that way, whether this checkout is installed in editable mode or not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "pyro_genmod", site / "pyro_genmod", ignore=ignore)
    for name in ("models", "guides"):
        shutil.copytree(ROOT / name, site / "pyro_genmod" / name, ignore=ignore)
    return site


def test_imports_respect_the_layers(installed_layout):
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(installed_layout)}
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=installed_layout,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken" in done.stdout


def test_no_import_cycle(installed_layout):
    """Every import inside the package, at module level or inside functions, as a graph: no cycle."""
    import grimp  # installed with import-linter, a test extra

    sys.path.insert(0, str(installed_layout))
    try:
        graph = grimp.build_graph("pyro_genmod", cache_dir=None)
    finally:
        sys.path.remove(str(installed_layout))
    modules = sorted(graph.modules)
    cycles = []
    for module in modules:
        for other in graph.find_modules_directly_imported_by(module):
            if other != module and graph.chain_exists(importer=other, imported=module):
                if not (module == "pyro_genmod" or other == "pyro_genmod"):  # the package's public API re-exports
                    cycles.append((module, other))
    assert not cycles, cycles[:10]

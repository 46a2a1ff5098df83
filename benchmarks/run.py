"""Run a benchmark grid: ``python -m benchmarks.run benchmarks/configs/NAME.toml`` (same as ``genmod bench``)."""

from __future__ import annotations

import sys

from pyro_genmod.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

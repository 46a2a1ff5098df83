"""argparse types for the benchmark scripts' output options.

The folder is made when the option is parsed, so a location that cannot hold the results (a file
in the way, no permission) is one usage error with exit code 2, before any training starts::

    parser.add_argument("--results-dir", type=results_folder, default=str(RESULTS))
    parser.add_argument("--out", type=output_file, default=str(RESULTS / "table.md"))
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["output_file", "results_folder"]


def results_folder(text: str) -> Path:
    """An option naming a folder for results: the folder, created if missing."""
    return _with_folder(Path(text), Path(text))


def output_file(text: str) -> Path:
    """An option naming a results file (or a stem the script adds suffixes to): the path, its folder
    created if missing."""
    return _with_folder(Path(text), Path(text).parent)


def _with_folder(value: Path, folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise argparse.ArgumentTypeError(f"'{folder}' is a file, not a folder; name a folder for the results")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot create the folder '{folder}': {error.strerror or error}") from None
    return value

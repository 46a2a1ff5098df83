"""Where a bench row was made: the code (package version and git commit) and the machine.

Every cell's ``result.json`` carries these, and the Markdown table names them under the rows, so a
results page says what code and machine produced it without anyone writing it by hand.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["code_version", "commit_label", "cpu_model", "git_commit", "machine"]

_PACKAGE = Path(__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=_PACKAGE, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def git_commit() -> str | None:
    """The short commit of the git checkout this package runs from; ``None`` for an installed copy
    (a pinned run can name its commit with ``GENMOD_COMMIT``)."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return os.environ.get("GENMOD_COMMIT") or None
    return head.stdout.strip()


def commit_label() -> str:
    """:func:`git_commit` for a results file's ``commit`` field: ``"unknown"`` when there is none."""
    return git_commit() or "unknown"


@functools.cache
def code_version() -> str:
    """``pyro-genmod VERSION`` and, from a git checkout, ``@COMMIT`` (``+modified`` when the package's
    files differ from that commit)."""
    try:
        version = metadata.version("pyro-genmod")
    except metadata.PackageNotFoundError:
        version = "unknown"
    text = f"pyro-genmod {version}"
    commit = git_commit()
    if commit is None:
        return text  # an installed wheel: no checkout to name
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    modified = "+modified" if changed is not None and changed.returncode == 0 and changed.stdout.strip() else ""
    return f"{text} @{commit}{modified}"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what :mod:`platform` knows of it."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """Architecture, CPU count, the threads torch uses, and torch's version (and the GPU, if one is used)."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads{gpu}, "
            f"torch {torch.__version__}")

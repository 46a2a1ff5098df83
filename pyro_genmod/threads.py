"""How many threads torch computes with: a default that holds up when other processes compete.

Torch starts with one intra-op thread per physical core. On a machine whose cores are already
busy that oversubscribes them, and OpenMP's waiting threads then make small operations far
slower: on a shared 2-core machine the default ``genmod train`` took 70-245 s with torch's
count against 6.8 s with one thread (issue 21). :func:`default_threads` therefore asks for no
more threads than there are idle CPUs.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import torch

from .checks import check_positive_int

__all__ = ["available_cpus", "default_threads", "resolve_threads", "torch_threads"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or ``taskset``'s limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """Torch's own thread count (one per physical core, or ``OMP_NUM_THREADS``), lowered to the
    CPUs that are idle: those this process may run on minus the 1-minute load average, rounded,
    and at least 1. So an idle machine gets every core, and a machine already running other
    jobs gets one thread per idle core, or one.

    Decided once per process (the first time it is asked), so the fits of one process use the
    same count and are not talked down by their own load.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average: trust torch's count
        load = 0.0
    idle = round(available_cpus() - load)
    return max(1, min(torch.get_num_threads(), available_cpus(), idle))


def resolve_threads(threads: int | None) -> int:
    """``threads`` checked (a positive integer), or :func:`default_threads` for ``None``."""
    if threads is None:
        return default_threads()
    check_positive_int("threads", threads)
    return threads


@contextmanager
def torch_threads(threads: int):
    """Run the block with ``torch.set_num_threads(threads)``, then restore the previous count."""
    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)

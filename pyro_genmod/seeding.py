"""Seeded randomness that leaves the caller's random state alone (a leaf module).

Every function of the library that takes ``seed=`` draws inside :func:`seeded`: with an integer,
the draws come from a stream started at that seed and, afterwards, torch's global generators
(the CPU one and those of every initialized CUDA device, which ``torch.manual_seed`` also
reseeds) are exactly as they were. With ``seed=None`` the draws come from the global generators,
which advance: two calls give two independent estimates.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from .errors import ConfigError

__all__ = ["MAX_SEED", "check_seed", "forked_rng", "seeded"]

MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds numpy's legacy generator, which takes 32 bits


def check_seed(seed, name: str = "seed"):
    """``seed`` if it is ``None`` or an ``int`` in [0, 2**32 - 1] (what ``pyro.set_rng_seed``, and so
    numpy's legacy generator, accepts), else :class:`ConfigError`."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name} must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
    return seed


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def forked_rng():
    """A context that restores torch's CPU and CUDA generators on exit (``torch.random.fork_rng``
    over every initialized CUDA device, not only the current one)."""
    return torch.random.fork_rng(devices=_cuda_devices())


@contextmanager
def seeded(seed: int | None):
    """Draw from a stream seeded with ``seed`` and restore the global generators afterwards;
    ``seed=None`` draws from the global generators (fresh noise, advancing them). A seed outside
    [0, 2**32 - 1] is refused with a :class:`~pyro_genmod.errors.ConfigError`."""
    check_seed(seed)
    if seed is None:
        with nullcontext():
            yield
        return
    with forked_rng():
        torch.manual_seed(seed)
        yield

"""Exceptions raised by pyro-genmod; the CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations

__all__ = [
    "GenmodError",
    "UnknownNameError",
    "PairingError",
    "DataError",
    "ConfigError",
    "RunFolderError",
    "TrainingDiverged",
    "CallbackError",
    "FastPathUnsupported",
    "KhatWarning",
]


class GenmodError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class UnknownNameError(GenmodError, ValueError):
    """An unknown model, guide, dataset or objective name."""


class PairingError(GenmodError, ValueError):
    """A guide that cannot cover a model's latent sites."""


class DataError(GenmodError, ValueError):
    """Data that a model or a dataset loader cannot use."""


class ConfigError(GenmodError, ValueError):
    """An invalid option value (epochs, batch size, K, learning rate, ...)."""


class RunFolderError(GenmodError):
    """A run folder that is missing, incomplete, from another version, or already taken."""


class FastPathUnsupported(GenmodError):
    """The pair needs Pyro's full ``Trace_ELBO`` (a score-function or enumerated site)."""


class TrainingDiverged(GenmodError, RuntimeError):
    """Training blew up: a NaN or infinite loss, a training loss orders of magnitude above its
    running median, or a validation ELBO far below its best. ``.result`` holds the run up to
    the last good state."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class CallbackError(GenmodError, RuntimeError):
    """A callback given to ``fit`` raised: training stopped there. ``.callback`` and ``.hook``
    name it, ``.result`` holds the run so far; the last checkpoint written is left as it was."""

    def __init__(self, message: str, callback: str = "", hook: str = "", result=None):
        super().__init__(message)
        self.callback, self.hook, self.result = callback, hook, result


class KhatWarning(UserWarning):
    """Some points got a NaN PSIS k-hat (too few importance samples): their reliability is unknown."""

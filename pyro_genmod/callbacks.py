"""Callbacks: hooks into :func:`~pyro_genmod.train.fit` (the loggers of
:mod:`pyro_genmod.tracking` are built on them).

A callback subclasses :class:`Callback` and overrides the hooks it needs; each hook gets one
event object:

- ``on_fit_start(FitStart)``: before the first step (of a fresh or a resumed fit);
- ``on_step(StepEnd)``: every ``every_n_steps`` optimizer steps (counted over the whole fit):
  the loss per point, the learning rate and the gradient norm of that step;
- ``on_epoch_end(EpochEnd)``: the epoch's record (train and validation ELBO, seconds, learning
  rate) and, on demand, the KL term of each latent site on the validation set;
- ``on_fit_end(FitEnd)``: the result (also when training diverged or a callback raised, with
  the error).

Under ``torch.distributed`` the callbacks run on rank 0 only. A callback that raises stops the
fit with a :class:`~pyro_genmod.errors.CallbackError` naming the callback and the hook; the
checkpoint is written outside the hooks, so the last one saved stays loadable and resumable.
The hooks run after the step's or the epoch's numbers are final and before the checkpoint that
follows them, so a fit resumed from a checkpoint sees again every event after it, and none
before it (``FitStart.global_step`` and ``FitStart.history`` say where it resumed).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .densities import latent_log_ratios
from .errors import CallbackError, ConfigError, GenmodError
from .seeding import seeded

__all__ = ["Callback", "CallbackList", "EpochEnd", "FitEnd", "FitStart", "StepEnd", "kl_per_site"]

HOOKS = ("on_fit_start", "on_step", "on_epoch_end", "on_fit_end")


@dataclass
class FitStart:
    """The fit about to train: its options, the pair and data, and where it starts."""

    options: dict  # the fit's options as recorded (epochs, batch_size, lr, seed, objective, ...)
    model: torch.nn.Module
    guide: torch.nn.Module
    data: object  # the Dataset
    steps_per_epoch: int
    first_epoch: int  # 1, or the epoch a resumed fit continues
    global_step: int  # optimizer steps already taken (0 unless resumed)
    history: list[dict]  # records of the epochs already done (empty unless resumed)
    resumed: bool


@dataclass
class StepEnd:
    """One optimizer step: ``global_step`` counts steps over the whole fit, from 1."""

    epoch: int
    step: int  # within the epoch, from 1
    global_step: int
    loss: float  # the objective per point of the minibatch (negative ELBO for trace_elbo)
    lr: float
    grad_norm: float  # global L2 norm of the gradients the optimizer used (after clipping)


@dataclass
class EpochEnd:
    """The end of an epoch: ``record`` is the row :attr:`FitResult.history` gets."""

    record: dict  # epoch, train_elbo, val_elbo, seconds, lr
    global_step: int
    model: torch.nn.Module
    guide: torch.nn.Module
    val_x: Tensor
    seed: int
    _kl: dict[str, float] | None = field(default=None, repr=False)

    @property
    def epoch(self) -> int:
        return self.record["epoch"]

    @property
    def kl(self) -> dict[str, float]:
        """KL(q(z_s|...) || p(z_s|...)) of each latent site s, nats per validation point (one
        draw per point, seeded with the fit's seed; computed on first use, training's random
        streams untouched). Empty, with a warning, for a pair whose sites the per-point scorer
        refuses (a latent outside the data plate)."""
        if self._kl is None:
            try:
                self._kl = kl_per_site(self.model, self.guide, self.val_x, seed=self.seed)
            except GenmodError as error:
                warnings.warn(f"no KL per latent site for this pair: {error}", RuntimeWarning, stacklevel=2)
                self._kl = {}
        return self._kl


@dataclass
class FitEnd:
    """The fit has stopped: ``result`` is the :class:`FitResult`; ``error`` what stopped it, if
    anything did (a divergence, a callback's error, an interruption)."""

    result: object
    error: BaseException | None = None

    @property
    def final(self) -> dict:
        """The last epoch's record (empty if no epoch finished)."""
        history = self.result.history
        return dict(history[-1]) if history else {}


class Callback:
    """Base class of fit callbacks: every hook does nothing until overridden.

    ``every_n_steps``: how often :meth:`on_step` is called (optimizer steps, counted over the
    whole fit, so a resumed fit keeps the same cadence).
    """

    every_n_steps: int = 50

    def on_fit_start(self, event: FitStart) -> None:
        pass

    def on_step(self, event: StepEnd) -> None:
        pass

    def on_epoch_end(self, event: EpochEnd) -> None:
        pass

    def on_fit_end(self, event: FitEnd) -> None:
        pass


def kl_per_site(model, guide, x: Tensor, *, seed: int = 0, batch_size: int = 1024) -> dict[str, float]:
    """Mean KL term log q(z_s|...) - log p(z_s|...) of each latent site at one draw z ~ q per
    point of ``x``, through the log-density engine (:func:`~pyro_genmod.densities.latent_log_ratios`)."""
    totals: dict[str, float] = {}
    with seeded(seed), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            for name, ratio in latent_log_ratios(model, guide, x[start : start + batch_size], 1).items():
                totals[name] = totals.get(name, 0.0) + float(ratio.sum())
    return {name: total / x.shape[0] for name, total in totals.items()}


def _name(callback) -> str:
    return getattr(callback, "name", None) or type(callback).__name__


class CallbackList:
    """The callbacks of one fit, called hook by hook; an exception becomes a
    :class:`CallbackError` naming the callback and the hook."""

    def __init__(self, callbacks: Iterable[Callback] | None = (), *, enabled: bool = True):
        if callbacks is None:
            callbacks = ()
        if isinstance(callbacks, Callback):
            callbacks = (callbacks,)
        try:
            callbacks = list(callbacks)
        except TypeError:
            raise ConfigError(
                f"callbacks must be a list of pyro_genmod.callbacks.Callback objects, got {type(callbacks).__name__}"
            ) from None
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError(
                    f"callback {callback!r} is not a pyro_genmod.callbacks.Callback; subclass Callback "
                    f"and override its hooks ({', '.join(HOOKS)})"
                )
            every = getattr(callback, "every_n_steps", None)
            if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
                raise ConfigError(
                    f"callback {_name(callback)}: every_n_steps must be a positive integer or None, got {every!r}"
                )
        self.callbacks = callbacks if enabled else []

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def due(self, global_step: int) -> list[Callback]:
        """The callbacks whose ``on_step`` is due after step ``global_step``."""
        return [c for c in self.callbacks if c.every_n_steps is not None and global_step % c.every_n_steps == 0]

    def call(self, hook: str, event, callbacks: list[Callback] | None = None, result=None) -> None:
        for callback in self.callbacks if callbacks is None else callbacks:
            try:
                getattr(callback, hook)(event)
            except Exception as error:
                message = " ".join(str(error).split()) or "no message"
                raise CallbackError(
                    f"callback {_name(callback)} raised in {hook}: {type(error).__name__}: {message}; "
                    f"training stopped (the last checkpoint written, if any, is intact and can be resumed)",
                    callback=_name(callback), hook=hook, result=result,
                ) from error

    def end(self, event: FitEnd) -> None:
        """``on_fit_end`` on every callback. When the fit already failed (``event.error``), an
        error in a callback is reported as a warning so it does not hide the first one."""
        if event.error is None:
            self.call("on_fit_end", event, result=event.result)
            return
        for callback in self.callbacks:
            try:
                callback.on_fit_end(event)
            except Exception as error:  # noqa: BLE001  (reported, not raised: the first error is the one)
                warnings.warn(
                    f"callback {_name(callback)} raised in on_fit_end after the fit had stopped: "
                    f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2,
                )

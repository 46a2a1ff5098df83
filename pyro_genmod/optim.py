"""Optimizers, learning-rate schedules and gradient clipping for :func:`~pyro_genmod.train.fit`.

A training recipe names its parts, so runs, bench configs and the CLI can store and rebuild it:

* ``optimizer``: a ``torch.optim`` class or its name, case-insensitive (``"adam"``, ``"adamw"``,
  ``"sgd"``, ``"rmsprop"``, ...), with ``optimizer_options`` (for example ``{"eps": 1e-4}``).
  The default is Adam, with torch's fused kernel where the device has one.
* ``lr_schedule``: a named schedule (:data:`SCHEDULES`: ``"constant"``, ``"burda"``), any
  ``torch.optim.lr_scheduler`` class or its name (``"StepLR"``, ``"CosineAnnealingLR"``,
  ``"ReduceLROnPlateau"``, ...), or a function ``optimizer -> scheduler``; its options in
  ``lr_schedule_options``. A schedule steps once at the end of every epoch
  (``ReduceLROnPlateau`` on the negated validation ELBO).
* ``clip_grad_norm``: clip the global gradient norm (``torch.nn.utils.clip_grad_norm_``).

The ``burda`` schedule is the recipe of Burda, Grosse & Salakhutdinov (2015, Section 5):
3^i epochs at learning rate ``lr * 10^(-i/7)`` for i = 0..7 (3,280 epochs in all), written as
torch's ``MultiStepLR``. Its option ``epochs`` compresses the same eight stages into a shorter
budget (stage lengths proportional to 3^i).
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as torch_schedulers

from .errors import ConfigError

__all__ = [
    "SCHEDULES", "BURDA_EPOCHS", "create_optimizer", "create_lr_schedule", "check_clip_grad_norm",
    "burda_milestones", "schedule_state", "load_schedule_state", "step_schedule",
]

#: Epochs of Burda et al.'s schedule: sum of 3^i for i = 0..7.
BURDA_EPOCHS = sum(3**i for i in range(8))


def burda_milestones(epochs: int = BURDA_EPOCHS) -> list[int]:
    """Epoch counts after which Burda's learning rate drops by 10^(-1/7).

    With the paper's 3,280 epochs: 1, 4, 13, 40, 121, 364, 1093. A shorter (or longer) budget
    keeps the shape: stage i lasts ``round(epochs * 3^i / 3280)`` epochs (at least 1), the last
    stage taking what is left.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 16:
        raise ConfigError(f"the burda schedule needs epochs >= 16 (eight stages), got {epochs!r}")
    lengths = [max(1, round(epochs * 3**i / BURDA_EPOCHS)) for i in range(7)]
    ends, total = [], 0
    for length in lengths:
        total += length
        ends.append(total)
    if ends[-1] >= epochs:
        raise ConfigError(f"the burda schedule cannot fit 8 stages into {epochs} epochs")
    return ends


def _burda(optimizer: Optimizer, epochs: int = BURDA_EPOCHS) -> torch_schedulers.LRScheduler:
    return torch_schedulers.MultiStepLR(optimizer, milestones=burda_milestones(epochs), gamma=10 ** (-1 / 7))


def _constant(optimizer: Optimizer) -> torch_schedulers.LRScheduler:
    return torch_schedulers.LambdaLR(optimizer, lambda epoch: 1.0)


#: Named schedules (besides torch's own scheduler classes, which are found by name too).
SCHEDULES: dict[str, Callable[[Optimizer], torch_schedulers.LRScheduler]] = {
    "constant": _constant,
    "burda": _burda,
}


def _torch_classes(module, base: type) -> dict[str, type]:
    return {
        name.lower(): cls for name, cls in vars(module).items()
        if inspect.isclass(cls) and issubclass(cls, base) and cls is not base and not name.startswith("_")
    }


def _options(what: str, options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"{what} must be a dict of keyword options, got {options!r}")
    return dict(options)


def create_optimizer(params, lr: float, optimizer=None, options: dict | None = None) -> Optimizer:
    """A torch optimizer over ``params``: ``optimizer`` is ``None`` (Adam), a name or a class."""
    options = _options("optimizer_options", options)
    if "lr" in options:
        raise ConfigError("give the learning rate as lr=..., not inside optimizer_options")
    if optimizer is None or (isinstance(optimizer, str) and optimizer.lower() == "adam"):
        cls = torch.optim.Adam
    elif isinstance(optimizer, str):
        classes = _torch_classes(torch.optim, Optimizer)
        cls = classes.get(optimizer.lower())
        if cls is None:
            known = ", ".join(sorted(c.__name__ for c in classes.values()))
            raise ConfigError(f"unknown optimizer {optimizer!r}; use a torch.optim class or one of: {known}")
    elif inspect.isclass(optimizer) and issubclass(optimizer, Optimizer):
        cls = optimizer
    else:
        raise ConfigError(
            f"optimizer must be a torch.optim class or its name, got {optimizer!r} "
            f"(fit builds the optimizer itself, over the model's and guide's parameters)"
        )
    if "betas" in options and isinstance(options["betas"], list):
        options["betas"] = tuple(options["betas"])  # from JSON or TOML
    if cls is torch.optim.Adam and "fused" not in options and "foreach" not in options:
        try:  # one pass over every parameter per step (see benchmarks/results/perf.md)
            return cls(params, lr=lr, fused=True, **options)
        except TypeError as error:
            raise ConfigError(f"optimizer Adam does not take these options ({error})") from None
        except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
            pass
    try:
        return cls(params, lr=lr, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optimizer {cls.__name__} refused its options {options}: {error}") from None


def create_lr_schedule(optimizer: Optimizer, schedule=None, options: dict | None = None):
    """A learning-rate scheduler for ``optimizer`` (``None`` when ``schedule`` is ``None``)."""
    options = _options("lr_schedule_options", options)
    if schedule is None:
        if options:
            raise ConfigError("lr_schedule_options were given without an lr_schedule; name the schedule too")
        return None
    if isinstance(schedule, torch_schedulers.LRScheduler | torch_schedulers.ReduceLROnPlateau):
        raise ConfigError(
            "lr_schedule must be a name, a scheduler class or a function of the optimizer, not a "
            "scheduler object: that one is bound to an optimizer fit does not use"
        )
    if isinstance(schedule, str):
        factory = SCHEDULES.get(schedule.lower())
        classes = _torch_classes(torch_schedulers, torch_schedulers.LRScheduler)
        classes["reducelronplateau"] = torch_schedulers.ReduceLROnPlateau
        for helper in ("lambdalr", "multiplicativelr", "sequentiallr", "chainedscheduler"):
            classes.pop(helper, None)  # they need functions or other schedulers: pass a callable
        factory = factory or classes.get(schedule.lower())
        if factory is None:
            known = ", ".join([*SCHEDULES, *sorted(c.__name__ for c in classes.values())])
            raise ConfigError(f"unknown lr_schedule {schedule!r}; use one of: {known}")
    elif callable(schedule):
        factory = schedule
    else:
        raise ConfigError(f"lr_schedule must be a name, a scheduler class or a function of the optimizer, got {schedule!r}")
    try:
        made = factory(optimizer, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"lr_schedule {schedule!r} refused its options {options}: {error}") from None
    if not isinstance(made, torch_schedulers.LRScheduler | torch_schedulers.ReduceLROnPlateau):
        raise ConfigError(f"lr_schedule {schedule!r} returned {type(made).__name__}, not a torch scheduler")
    return made


def check_clip_grad_norm(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"clip_grad_norm must be a positive number (the largest gradient norm), got {value!r}")
    return float(value)


def step_schedule(scheduler, val_elbo: float) -> None:
    """Advance ``scheduler`` by one epoch (``ReduceLROnPlateau`` watches the validation loss)."""
    if isinstance(scheduler, torch_schedulers.ReduceLROnPlateau):
        scheduler.step(-val_elbo)
    else:
        scheduler.step()


# --- scheduler state as JSON (checkpoints hold no pickles) ---------------------------------------


def _encode(value):
    if isinstance(value, Counter):
        return {"__counter__": [[_encode(k), n] for k, n in value.items()]}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise ConfigError(
        f"the learning-rate schedule's state holds a {type(value).__name__}, which a checkpoint cannot "
        f"store; use a torch scheduler or a named schedule"
    )


def _decode(value):
    if isinstance(value, dict) and "__counter__" in value:
        return Counter({_decode(k): n for k, n in value["__counter__"]})
    if isinstance(value, dict) and "__dict__" in value:
        return {_decode(k): _decode(v) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def schedule_state(scheduler) -> dict | None:
    """The scheduler's ``state_dict`` as JSON (functions inside it are rebuilt, not stored)."""
    if scheduler is None:
        return None
    state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    return _encode(state)


def load_schedule_state(scheduler, state) -> None:
    if scheduler is None or state is None:
        if (scheduler is None) != (state is None):
            raise ConfigError("cannot resume: the checkpoint and this call disagree on using an lr_schedule")
        return
    decoded = _decode(state)
    if isinstance(scheduler, torch_schedulers.LambdaLR):
        decoded["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(decoded)

"""Argument checks shared by every layer (a leaf module: it imports nothing from the package but errors)."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DataError

__all__ = [
    "as_points",
    "available_memory",
    "built_within_memory",
    "check_device",
    "check_fields",
    "check_memory",
    "check_points",
    "check_positive_int",
    "check_roles",
    "check_training_memory",
    "training_memory",
]


def check_positive_int(name: str, value) -> int:
    """``value`` if it is a positive ``int`` (not a bool), else :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_points(x, data_shape: tuple[int, ...], model_name: str, what: str = "data", observation=None) -> None:
    """Raise :class:`DataError` naming the problem unless ``x`` is a batch of finite points of
    ``data_shape`` that ``observation`` (a likelihood, if given) can score."""
    if not isinstance(x, Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"{what} is empty; pass at least one data point")
    if tuple(x.shape[1:]) != tuple(data_shape):
        raise DataError(
            f"{what} has point shape {tuple(x.shape[1:])} but model '{model_name}' was built for "
            f"{tuple(data_shape)}; rebuild the model for this data with create_model(name, data)"
        )
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise DataError(f"{what} has NaN or inf values, first in row {row}")
    problem = observation.data_problem(x) if observation is not None else None
    if problem:
        raise DataError(f"{what}: {problem}")


def check_device(device) -> torch.device | None:
    """``device`` as a :class:`torch.device` (``None`` stays ``None``) if torch knows it and it is
    there: ``cuda`` needs a GPU torch can use. Otherwise :class:`ConfigError` naming the fix."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' needs a CUDA GPU, but torch finds none here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{device}' does not exist: torch finds {torch.cuda.device_count()} CUDA GPU(s), "
                f"numbered from 0"
            )
    elif parsed.type not in ("cpu", "mps", "meta"):
        raise ConfigError(f"device '{device}' is not supported; use 'cpu' or 'cuda'")
    return parsed


def as_points(x, what: str = "x") -> Tensor:
    """``x`` as a tensor of points in torch's default floating dtype (float32 unless changed).

    The rule: a tensor or numpy array of real numbers (floating, integer or boolean, any byte
    order) is converted with ``.to(torch.get_default_dtype())``, so float64 and integer data score
    as the float32 values they round to; anything else (a list, complex numbers, strings,
    objects) is refused with a :class:`DataError` naming the fix.
    """
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise DataError(f"{what} holds {x.dtype} values; pass real numbers")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")))
    if not isinstance(x, Tensor):
        raise DataError(
            f"{what} must be a torch.Tensor of points (one per row), got {type(x).__name__}; "
            f"convert it with torch.as_tensor(...)"
        )
    if x.is_complex():
        raise DataError(f"{what} holds complex values ({x.dtype}); pass real numbers")
    return x if x.dtype == torch.get_default_dtype() else x.to(torch.get_default_dtype())


def _name(obj) -> str:
    return getattr(obj, "registry_name", None) or type(obj).__name__


def check_roles(model=None, guide=None) -> None:
    """Refuse a guide passed where the model goes, or a model where the guide goes (arguments
    swapped): a model validates data (``validate_data``), a guide only samples latent sites."""
    if model is not None and hasattr(model, "latent_sites") and not hasattr(model, "validate_data"):
        raise ConfigError(
            f"'{_name(model)}' was passed as the model but is a guide; pass the model first, then "
            f"the guide: (model, guide, ...)"
        )
    if guide is not None and hasattr(guide, "latent_sites") and hasattr(guide, "validate_data"):
        raise ConfigError(
            f"'{_name(guide)}' was passed as the guide but is a model; pass the model first, then "
            f"the guide: (model, guide, ...)"
        )


# --- memory -------------------------------------------------------------------------------------


def available_memory(device=None) -> int | None:
    """Bytes free for new tensors on ``device``: ``torch.cuda.mem_get_info`` on a GPU, else the
    available RAM (``psutil`` where installed, else ``os.sysconf``); ``None`` when unknown."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.0f} MiB"


def check_memory(need: float, what: str, fix: str, device=None) -> None:
    """:class:`ConfigError` if ``need`` bytes exceed what :func:`available_memory` reports."""
    available = available_memory(device)
    if available is not None and need > available:
        raise ConfigError(f"{what} needs at least {_size(need)} of memory, but {_size(available)} is available; {fix}")


def training_memory(
    num_params: int, rows: int, row_width: int, point_numel: int, itemsize: int = 4
) -> int:
    """A lower bound on the bytes a training step needs, estimated before anything is allocated:
    the parameters with their gradients and Adam's two moments (4 copies), plus, for each of the
    ``rows`` (point, particle) pairs of a minibatch, one value per output unit of the model's
    layers (``row_width``: the first dimension of each weight matrix, which the decoder computes
    for every particle) and one per value of a point (the observation's log-density). Autograd
    keeps more than that (measured on the digits VAE: about 1.4 times), so a configuration this
    bound refuses cannot fit; one it admits may still be tight."""
    return itemsize * (4 * num_params + rows * (row_width + point_numel))


def check_training_memory(model, guide, batch_size: int, num_particles: int, device=None) -> None:
    """Refuse (:class:`ConfigError`) a training configuration whose :func:`training_memory`
    lower bound exceeds the memory available on ``device``, before anything is allocated."""
    params = {id(p): p for module in (model, guide) if hasattr(module, "parameters") for p in module.parameters()}
    width = sum(p.shape[0] for p in model.parameters() if p.ndim >= 2) if hasattr(model, "parameters") else 0
    shape = tuple(getattr(model, "data_shape", ()))
    point_numel = int(np.prod(shape)) if shape else 1
    need = training_memory(sum(p.numel() for p in params.values()), batch_size * num_particles, width, point_numel)
    check_memory(
        need, f"training with a batch of {batch_size} points x {num_particles} particles (points of shape {shape})",
        "lower --batch-size or --num-particles", device,
    )


def built_within_memory(build, what: str, fix: str):
    """``build()`` (a model or guide constructor), after checking on torch's ``meta`` device,
    where parameters take no memory, that its parameters fit in the available memory; refused
    with a :class:`ConfigError` when they cannot. A constructor that cannot run on ``meta`` is
    built directly, and an allocation failure then is reported the same way."""
    try:
        with torch.device("meta"):
            probe = build()
        params = list(probe.parameters())
    except Exception:  # noqa: BLE001 - only the estimate is skipped; the real build reports its own errors
        params = None
    if params:
        count = sum(p.numel() for p in params)
        check_memory(sum(p.numel() * p.element_size() for p in params), f"{what}, with {_count(count)} parameters,", fix)
    try:
        return build()
    except RuntimeError as error:
        if "allocate" not in str(error):
            raise
        raise ConfigError(f"{what} does not fit in memory ({str(error).splitlines()[0][:160]}); {fix}") from None


def _count(n: float) -> str:
    return f"{n:,.0f}" if n < 1e6 else f"{n / 1e6:,.0f} million" if n < 1e9 else f"{n / 1e9:,.1f} billion"


# --- records read back from disk (config.json, checkpoint metadata) -----------------------------


def _is_int(low: int | None = None):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


FIELD = {  # the checks check_fields' specs are built from, with what each says it wants
    "object": (lambda v: isinstance(v, dict), "an object ({...})"),
    "text": (lambda v: isinstance(v, str) and bool(v), "text"),
    "text or null": (lambda v: v is None or isinstance(v, str), "text or null"),
    "list": (lambda v: isinstance(v, list), "a list ([...])"),
    "positive int": (_is_int(1), "a positive integer"),
    "positive int or null": (lambda v: v is None or _is_int(1)(v), "a positive integer or null"),
    "count": (_is_int(0), "a non-negative integer"),
    "count or null": (lambda v: v is None or _is_int(0)(v), "a non-negative integer or null"),
    "seed": (lambda v: _is_int(0)(v) and v <= 2**32 - 1, "an integer seed in [0, 2**32 - 1]"),
    "number": (_is_number, "a number"),
    "number or null": (lambda v: v is None or _is_number(v), "a number or null"),
    "positive number": (lambda v: _is_number(v) and v > 0, "a positive number"),
}


def check_fields(record, spec: dict[str, str], where: str, error=ConfigError, required: tuple[str, ...] = ()) -> None:
    """Check the typed fields of a record read back from disk (a hand-edited ``config.json``,
    checkpoint metadata): ``spec`` maps a dotted field name to a kind of :data:`FIELD`; a field
    in ``required`` must be present, others are checked when they are. The first wrong one
    raises ``error`` naming the field, what it must be and what it holds."""
    for dotted, kind in spec.items():
        value, present = record, True
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                present = False
                break
            value = value[part]
        if not present:
            if dotted in required:
                raise error(f"{where}: field '{dotted}' is missing; restore the file or make it again")
            continue
        check, what = FIELD[kind]
        if not check(value):
            raise error(f"{where}: field '{dotted}' must be {what}, got {value!r}; restore the file or make it again")

"""Training checkpoints: one safetensors file, written atomically, read without unpickling.

A checkpoint holds everything a fit needs to continue bit for bit where it stopped: model and
guide tensors, the optimizer state, the objective's learned state (FactorVAE's discriminator and
its optimizer), the RNG states (torch, numpy, python and the fit's data-order generator), the
epoch, the step within it, that epoch's data order, the history so
far, and a ``spec`` saying how to rebuild the run. Tensors are stored as safetensors; every
other value lives as JSON in the file's metadata, beside a SHA-256 digest of the tensors and of
that metadata (its canonical JSON, everything but the digest itself), so a truncated, corrupted
or hand-edited file (say, a changed epoch) is refused instead of half-loaded or silently resumed.
Nothing is ever unpickled: a ``torch.save`` file (a pickle, which can run code when loaded) is
refused before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from .checks import check_fields
from .errors import ConfigError, GenmodError, RunFolderError
from .folders import CHECKPOINT_FILE, _atomic_write
from .state_io import load_optimizer_tensors, load_state, optimizer_tensors

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "Checkpointer",
    "Resumed",
    "load_checkpoint",
    "load_optimizer_tensors",
    "load_state",
    "optimizer_tensors",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 2  # 2: the digest covers the metadata too
# version 1 files (written before that) are still read, their digest checked over the tensors only
_READABLE_VERSIONS = (1, 2)
_META_KEY = "pyro_genmod_checkpoint"
# torch.save writes a zip archive around a pickle; older files and plain pickles start with
# the pickle PROTO opcode and a protocol number. Used only to name the problem in the error.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass
class Checkpoint:
    """A loaded checkpoint: named CPU tensors and the JSON metadata beside them."""

    tensors: dict[str, Tensor]
    meta: dict
    path: Path | None = None

    def group(self, prefix: str) -> dict[str, Tensor] | None:
        """The tensors under ``prefix.`` with the prefix removed (``None`` if there are none)."""
        start = prefix + "."
        found = {k[len(start):]: v for k, v in self.tensors.items() if k.startswith(start)}
        return found or None


def _canonical(meta: dict) -> bytes:
    """The metadata the digest covers: canonical JSON of everything but the digest itself."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def _digest(tensors: dict[str, Tensor], meta: dict | None) -> str:
    """SHA-256 of the tensors and (``meta`` not None) of the metadata's canonical JSON."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        sha.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if meta is not None:
        sha.update(b"meta:")
        sha.update(_canonical(meta))
    return sha.hexdigest()


def _write_bytes(path: str, payload: bytes) -> None:
    with open(path, "wb") as handle:  # _atomic_write syncs it before moving it into place
        handle.write(payload)


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-able) to ``path`` atomically.

    The file is written to a temporary name in the same folder, synced, then moved over
    ``path`` with ``os.replace``, so a kill at any moment leaves either the previous checkpoint
    or the new one, never a mix.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}  # no shared storage
    # as it will read back (tuples become lists, keys strings), so the digest matches on loading
    meta = json.loads(json.dumps({"version": CHECKPOINT_VERSION, **meta}))
    meta["sha256"] = _digest(tensors, meta)
    payload = safetensors_bytes(tensors, metadata={_META_KEY: json.dumps(meta)})
    try:
        _atomic_write(path, lambda tmp: _write_bytes(tmp, payload))
    except OSError as error:
        raise RunFolderError(f"cannot write checkpoint '{path}': {error.strerror or error}") from None
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, never unpickling anything.

    Raises :class:`RunFolderError` for a missing file, a pickle (``torch.save``) file, a
    truncated or corrupted file (bad header, digest mismatch) or another format version.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise RunFolderError(f"cannot read checkpoint '{path}': {error.strerror or error}") from None
    try:  # safetensors only parses a JSON header and copies bytes: nothing can run
        tensors: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        if head.startswith(_PICKLE_MAGIC):
            raise RunFolderError(
                f"'{path}' is a pickle (torch.save) file, which could run code when loaded; it was "
                f"not unpickled. Checkpoints are safetensors files written by pyro-genmod"
            ) from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunFolderError(
            f"checkpoint '{path}' is truncated or corrupted ({reason}); resume from an intact "
            f"copy or start the run again"
        ) from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise RunFolderError(f"'{path}' is a safetensors file but not a pyro-genmod checkpoint (no metadata)")
    version = meta.get("version")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        raise RunFolderError(
            f"checkpoint '{path}' has format version {version!r}, but this pyro-genmod reads "
            f"versions {_READABLE_VERSIONS[0]} to {CHECKPOINT_VERSION}; start the run again"
        )
    if meta.get("sha256") != _digest(tensors, meta if version >= 2 else None):
        raise RunFolderError(
            f"checkpoint '{path}' was altered after it was written (its tensors or its metadata, such as "
            f"the epoch and step, do not match its SHA-256: edited by hand, or corrupted); resume from "
            f"an intact copy or start the run again"
        )
    return Checkpoint(tensors=tensors, meta=meta, path=path)


# what resuming reads from a fit's checkpoint metadata, and the kinds (pyro_genmod.checks.FIELD)
_META_FIELDS = {
    "progress": "object", "progress.epoch": "positive int", "progress.step": "count",
    "progress.epoch_loss": "number", "progress.seconds": "number", "progress.history": "list",
    "progress.best_epoch": "count or null", "progress.best_value": "number or null",
    "progress.options": "object", "progress.initial_val_elbo": "number or null",
    "optimizer": "object", "rng": "object",
}
_META_REQUIRED = ("progress", "progress.epoch", "progress.step", "progress.history", "progress.options")


# --- training state <-> (tensors, JSON) -------------------------------------------------------


def _rng_state(generator: torch.Generator) -> tuple[dict[str, Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state(), "rng.generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def _set_rng_state(ckpt: Checkpoint, generator: torch.Generator) -> None:
    torch.set_rng_state(ckpt.tensors["rng.torch"])
    generator.set_state(ckpt.tensors["rng.generator"])
    cuda = ckpt.group("rng.cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda[str(i)] for i in range(len(cuda))])
    version, words, gauss = ckpt.meta["rng"]["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = ckpt.meta["rng"]["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    tensors, meta = optimizer_tensors(optimizer)
    return _prefixed("optim", tensors), meta


def _set_optimizer_state(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    load_optimizer_tensors(optimizer, ckpt.group("optim") or {}, ckpt.meta["optimizer"])


def _set_objective_state(objective, ckpt: Checkpoint) -> None:
    """Give ``objective`` its saved state (``objective.*`` tensors; none in an older file)."""
    try:
        objective.load_state_tensors(ckpt.group("objective") or {})
    except GenmodError as error:  # the objective says what is wrong; the file is where
        raise RunFolderError(f"checkpoint '{ckpt.path}': {error}") from None


def _prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


@dataclass
class Checkpointer:
    """Where and how often :func:`~pyro_genmod.train.fit` writes checkpoints.

    A checkpoint is written at the end of every epoch, and also every ``every`` optimizer steps
    when that is set. ``spec`` (JSON) is stored in each checkpoint; the run folder code uses it
    to rebuild the model, guide and data on ``genmod train --resume``.

    Arguments:
        folder: the run folder; the checkpoint is ``folder/checkpoint.safetensors``.
        every: also checkpoint every this many steps (``None``: only at epoch ends).
        spec: what rebuilds the run (model, guide, dataset, fit options).
    """

    folder: Path
    every: int | None = None
    spec: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1):
            raise ConfigError(f"checkpoint_every must be a positive integer, got {self.every!r}")

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def due(self, global_step: int) -> bool:
        return self.every is not None and global_step % self.every == 0

    def save(self, model, guide, optimizer, generator, progress: dict, *, order: Tensor | None = None,
             last_good: tuple[dict, dict] | None = None, best: tuple[dict, dict] | None = None,
             ddp=None, objective=None) -> None:
        """Write the state of a fit; ``progress`` is JSON (epoch, step, history, options...).

        ``objective``'s learned state (:meth:`~pyro_genmod.objectives.Objective.state_tensors`,
        FactorVAE's discriminator) is stored as ``objective.NAME`` tensors.

        Under data parallelism every rank must call this (the ranks' RNG states are gathered);
        only rank 0 writes.
        """
        rank_states = ddp.gather_rng_states() if ddp is not None else {}
        if ddp is not None and not ddp.is_main:
            return
        tensors = {**_prefixed("model", model.state_dict()), **_prefixed("guide", guide.state_dict())}
        optim_tensors, optim_meta = _optimizer_state(optimizer)
        rng_tensors, rng_meta = _rng_state(generator)
        tensors.update(optim_tensors)
        tensors.update(rng_tensors)
        tensors.update(rank_states)
        if hasattr(objective, "state_tensors"):  # an Objective; a bare loss function keeps no state
            tensors.update(_prefixed("objective", objective.state_tensors()))
        if order is not None:
            tensors["order"] = order
        for name, states in (("last_good", last_good), ("best", best)):
            if states is not None:
                tensors.update(_prefixed(f"{name}.model", states[0]))
                tensors.update(_prefixed(f"{name}.guide", states[1]))
        meta = {"progress": progress, "optimizer": optim_meta, "rng": rng_meta, "spec": self.spec}
        save_checkpoint(self.path, tensors, meta)

    def load(self) -> Checkpoint:
        if not self.path.is_file():
            raise RunFolderError(f"no checkpoint to resume from in '{self.folder}' (expected {CHECKPOINT_FILE})")
        return load_checkpoint(self.path)

    def restore(self, model, guide, optimizer, generator, options: dict, ddp=None, objective=None) -> Resumed:
        """Load the checkpoint into the modules, optimizer and RNGs (and ``objective``'s learned
        state, if it has any); return where the fit was.

        Refuses a checkpoint whose training options (other than ``epochs``) differ from
        ``options``, since continuing under other settings would not be the same run.
        """
        ckpt = self.load()
        # a version-1 digest does not cover the metadata, and a digest can be recomputed: type it too
        check_fields(ckpt.meta, _META_FIELDS, f"checkpoint '{self.path}' metadata", RunFolderError, required=_META_REQUIRED)
        try:
            return self._restore(ckpt, model, guide, optimizer, generator, options, ddp, objective)
        except GenmodError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RunFolderError(
                f"checkpoint '{self.path}' does not fit this model, guide and optimizer ({first}); "
                f"resume with the run's own settings or start again"
            ) from None

    def _restore(self, ckpt, model, guide, optimizer, generator, options, ddp, objective) -> Resumed:
        progress = ckpt.meta["progress"]
        saved = progress.get("options", {})
        for key in sorted(set(saved) | set(options)):
            if key != "epochs" and saved.get(key) != options.get(key):
                raise ConfigError(
                    f"cannot resume: the checkpoint was trained with {key}={saved.get(key)!r}, "
                    f"this call asks for {key}={options.get(key)!r}; use the checkpoint's value"
                )
        for name, module in (("model", model), ("guide", guide)):
            load_state(module, ckpt.group(name) or {}, f"checkpoint '{self.path}' does not fit this model and guide ({name})",
                       "resume with the run's own settings or start again")
        _set_optimizer_state(optimizer, ckpt)
        if hasattr(objective, "load_state_tensors"):  # before the RNGs, in case rebuilding its state draws from them
            _set_objective_state(objective, ckpt)
        _set_rng_state(ckpt, generator)
        if ddp is not None:
            torch.set_rng_state(ckpt.tensors[f"rng.rank.{ddp.rank}"])

        def states(name: str) -> tuple[dict, dict] | None:
            model_state = ckpt.group(f"{name}.model")
            return None if model_state is None else (model_state, ckpt.group(f"{name}.guide") or {})

        return Resumed(
            epoch=int(progress["epoch"]), step=int(progress["step"]), epoch_loss=float(progress["epoch_loss"]),
            seconds=float(progress["seconds"]), history=list(progress["history"]), best_epoch=progress["best_epoch"],
            best_value=float(progress["best_value"]), order=ckpt.tensors.get("order"),
            last_good=states("last_good"), best=states("best"), schedule=progress.get("schedule"),
            initial_val_elbo=progress.get("initial_val_elbo"),
        )


@dataclass
class Resumed:
    """Where a checkpointed fit stopped: continue epoch ``epoch`` after its first ``step`` steps."""

    epoch: int
    step: int
    epoch_loss: float
    seconds: float
    history: list[dict]
    best_epoch: int | None
    best_value: float
    order: Tensor | None
    last_good: tuple[dict, dict] | None
    best: tuple[dict, dict] | None
    schedule: dict | None = None
    initial_val_elbo: float | None = None  # the untrained pair's (absent from older checkpoints)

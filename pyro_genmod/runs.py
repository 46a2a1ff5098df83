"""Run folders: config, metrics, history and parameters, written safely, loaded without pickle.

A run folder holds ``config.json`` (enough to rebuild the run, and the SHA-256 of the three other
files), ``metrics.json``, ``history.csv`` (per-epoch ELBOs), ``params.safetensors`` (model and
guide tensors) and the training checkpoint ``checkpoint.safetensors``. How it stays whole when a
writer is killed, the disk fills up or two writers meet is :mod:`pyro_genmod.folders`' job;
here, **mixes are refused**: ``config.json`` records the SHA-256 of ``params.safetensors``,
``metrics.json`` and ``history.csv``, and :func:`load_run` refuses a folder whose files do not
match (a run replaced file by file, or a file edited by hand).
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from .checks import check_fields
from .datasets import Dataset, load_dataset
from ._registry import dataset_loader
from .errors import DataError, GenmodError, RunFolderError
from .factories import create_guide, create_model
from .programs import is_source, untrusted_source_error
from .state_io import load_state
from .folders import (  # noqa: F401  (re-exported: the run-folder API)
    _HASHED,
    _REREAD_SECONDS,
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    RUN_FILES,
    FolderLock,
    TakenFolder,
    _atomic_write,
    _sha256,
    _write_bytes,
    atomic_write,
    atomic_write_text,
    check_output_folder,
    prepare_run_folder,
    resume_folder,
    settle,
    take_output_folder,
    take_run_folder,
)

__all__ = [
    "Run", "save_run", "load_run", "prepare_run_folder", "take_run_folder", "take_output_folder", "resume_folder",
    "atomic_write", "atomic_write_text", "check_output_folder", "FolderLock", "TakenFolder", "FORMAT_VERSION",
    "RUN_FILES",
]


# --- saving and loading runs ------------------------------------------------------------------


def _params(model, guide) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"guide.{k}": v for k, v in guide.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    fields = list(history[0]) if history else ["epoch", "train_elbo", "val_elbo", "seconds"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def save_run(path, *, model, guide, data: Dataset, config: dict, metrics: dict, history: list[dict]) -> Path:
    """Write a run folder (the folder must come from :func:`prepare_run_folder`, or be the
    ``work`` folder of :func:`take_run_folder`).

    ``config.json`` is written last, with the SHA-256 of the other files, so a folder without it
    is recognisably incomplete and a folder whose files do not belong together is refused.
    """
    from . import __version__

    path = Path(path)
    params = safetensors_bytes(_params(model, guide))
    history_text = _history_csv(history)
    metrics_text = json.dumps(metrics, indent=2) + "\n"
    config = {
        "format_version": FORMAT_VERSION,
        "pyro_genmod_version": __version__,
        "model": _described(model),
        "guide": _described(guide),
        "dataset": {"name": data.name, "options": data.options},
        **config,
        "file_sha256": {
            "params.safetensors": _sha256(params),
            "metrics.json": _sha256(metrics_text.encode("utf-8")),
            "history.csv": _sha256(history_text.encode("utf-8")),
        },
    }
    try:
        _atomic_write(path / "params.safetensors", lambda tmp: _write_bytes(tmp, params))
        atomic_write_text(path / "history.csv", history_text)
        atomic_write_text(path / "metrics.json", metrics_text)
        atomic_write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    except OSError as error:
        raise RunFolderError(f"cannot write run folder '{path}': {error.strerror or error}") from None
    return path


@dataclass
class Run:
    """A loaded run: rebuilt model and guide with their saved parameters, and its data."""

    path: Path
    config: dict
    metrics: dict
    model: torch.nn.Module
    guide: torch.nn.Module
    data: Dataset


class _Mixed(Exception):
    """The files of a run folder do not belong together (maybe read while being replaced)."""


def _json_object(path: Path, raw: bytes) -> dict:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"cannot read '{path}': {error}") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"'{path}' does not hold a JSON object")
    return value


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise RunFolderError(f"cannot read '{path}': {error}") from None


# the fields of config.json that loading, evaluating and resuming a run read, and their kinds
_CONFIG_FIELDS = {
    "model": "object", "model.name": "text", "model.options": "object",
    "guide": "object", "guide.name": "text", "guide.options": "object",
    "dataset": "object", "dataset.name": "text", "dataset.options": "object",
    "training": "object", "training.epochs": "positive int", "training.batch_size": "positive int",
    "training.lr": "positive number", "training.seed": "seed", "training.objective": "text or null",
    "training.num_particles": "positive int", "training.early_stopping": "positive int or null",
    "training.beta": "number", "training.kl_warmup": "count", "training.free_bits": "number",
    "evaluation": "object", "evaluation.num_samples": "positive int", "evaluation.seed": "seed",
    "file_sha256": "object",
}
_CONFIG_REQUIRED = ("model", "model.name", "guide", "guide.name", "dataset", "dataset.name")


def _read_run_files(path: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise RunFolderError(
            f"run folder '{path}' is incomplete: missing {', '.join(missing)} (was training "
            f"interrupted? continue it with genmod train --resume {path})"
        )
    config = _json_object(path / "config.json", _read(path / "config.json"))
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):  # "1" (text) is not version 1
        raise RunFolderError(
            f"'{path / 'config.json'}': field 'format_version' must be the integer {FORMAT_VERSION}, got "
            f"{version!r} (a hand-edited file?); write {FORMAT_VERSION} without quotes, or train the run again"
        )
    if version != FORMAT_VERSION:
        newer = "a newer" if version > FORMAT_VERSION else "an older"
        raise RunFolderError(
            f"run folder '{path}' has format version {version}, written by {newer} pyro-genmod; this one "
            f"reads version {FORMAT_VERSION}: load it with the version that wrote it, or train the run again"
        )
    check_fields(config, _CONFIG_FIELDS, f"'{path / 'config.json'}'", RunFolderError, required=_CONFIG_REQUIRED)
    raw = {name: _read(path / name) for name in _HASHED}
    metrics = _json_object(path / "metrics.json", raw["metrics.json"])
    try:
        tensors = safetensors_load(raw["params.safetensors"])
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise RunFolderError(f"'{path / 'params.safetensors'}' is not a readable safetensors file: {error}") from None
    recorded = config.get("file_sha256")
    if isinstance(recorded, dict):  # older run folders record no digests
        for name in _HASHED:
            if recorded.get(name) != _sha256(raw[name]):
                raise _Mixed(
                    f"run folder '{path}' is inconsistent: {name} is not the file its config.json was "
                    f"saved with (a run replaced file by file, or a file edited by hand); train the run again"
                )
    return config, metrics, tensors


def _described(part) -> dict:
    """How config.json names a model or guide: registry name and options, and for a user's Pyro
    program where its code came from (file, SHA-256 or module)."""
    entry = {"name": part.registry_name, "options": part.init_kwargs}
    if getattr(part, "source", None):
        entry["source"] = part.source
    return entry


def _source_options(entry: dict) -> dict:
    options = dict(entry.get("options", {}))
    if is_source(entry.get("name")) and entry.get("source"):
        options["record"] = entry["source"]
    return options


def check_trusted(folder, spec: dict, trust_code: bool) -> None:
    """Refuse a run (``spec`` with ``model``/``guide`` entries) naming user code, unless trusted."""
    for part in ("model", "guide"):
        entry = spec.get(part) if isinstance(spec, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if is_source(name) and not trust_code:
            raise untrusted_source_error(name, folder)


def run_dataset_options(name: str, options: dict, allow_changed_data: bool = False) -> dict:
    """A run's recorded dataset options, plus ``allow_changed=True`` when asked and the loader
    takes it (``file``: accept a data file whose content differs from the recorded SHA-256)."""
    options = dict(options)
    if allow_changed_data and "allow_changed" in inspect.signature(dataset_loader(name)).parameters:
        options["allow_changed"] = True
    return options


def load_run(path, data: Dataset | None = None, *, trust_code: bool = False, allow_changed_data: bool = False) -> Run:
    """Load a run folder; ``data`` overrides reloading the dataset named in its config.

    Parameters are read with safetensors, which never unpickles objects. A replacement that
    was killed while it was committed is completed first (that needs write access); a folder
    whose files do not match the SHA-256 in its ``config.json`` is refused. A run trained with a
    user's Pyro program (``file.py:attr`` or ``module:attr``) imports that code to rebuild the
    model: it is refused unless ``trust_code=True`` (CLI: ``--trust-code``). A data file whose
    content changed since the run was trained is refused (:class:`DataError`) unless
    ``allow_changed_data=True`` (CLI: ``--allow-changed-data``).
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder '{path}' does not exist")
    deadline = time.monotonic() + _REREAD_SECONDS
    while True:
        settle(path)
        try:
            config, metrics, tensors = _read_run_files(path)
            break
        except _Mixed as error:  # read while a live writer was committing: read again
            if FolderLock.holder(path) is None or time.monotonic() > deadline:
                raise RunFolderError(str(error)) from None
            time.sleep(0.05)
    check_trusted(path, config, trust_code)
    try:
        model_cfg, guide_cfg, data_cfg = config["model"], config["guide"], config["dataset"]
        if data is None:
            options = run_dataset_options(data_cfg["name"], data_cfg.get("options", {}), allow_changed_data)
            data = load_dataset(data_cfg["name"], **options)
        model = create_model(model_cfg["name"], data, **_source_options(model_cfg))
        guide = create_guide(guide_cfg["name"], model, **_source_options(guide_cfg))
    except (KeyError, TypeError) as error:
        raise RunFolderError(f"run folder '{path}' has an invalid config.json ({error!r})") from None
    except DataError:
        raise  # the data the run names is missing or changed: say so as it is
    except GenmodError as error:
        raise RunFolderError(f"cannot rebuild the run in '{path}': {error}") from None
    for prefix, module in (("model.", model), ("guide.", guide)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        load_state(module, state, f"parameters in '{path / 'params.safetensors'}' ({prefix[:-1]})")
    model.eval(), guide.eval()
    return Run(path=path, config=config, metrics=metrics, model=model, guide=guide, data=data)

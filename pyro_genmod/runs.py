"""Run folders: config, metrics, history and parameters, written atomically, loaded without pickle.

A run folder holds ``config.json`` (enough to rebuild the run), ``metrics.json``,
``history.csv`` (per-epoch ELBOs) and ``params.safetensors`` (model and guide tensors).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._registry import create_guide, create_model
from .data import Dataset, load_dataset
from .errors import GenmodError, RunFolderError

__all__ = ["Run", "save_run", "load_run", "prepare_run_folder", "FORMAT_VERSION", "RUN_FILES"]

FORMAT_VERSION = 1
RUN_FILES = ("config.json", "metrics.json", "history.csv", "params.safetensors")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it into place,
    so a crash never leaves a half-written file under ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    _atomic_write(Path(path), write)


def prepare_run_folder(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``path`` for a new run, refusing a folder that already holds files unless
    ``overwrite``; fail early (before any training) if it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output path '{path}' exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise RunFolderError(
            f"output folder '{path}' is not empty (it may hold a run); choose another --out, "
            f"or pass --overwrite to replace its run files"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test.", delete=True)
        probe.close()
    except OSError as error:
        raise RunFolderError(f"cannot write to output folder '{path}': {error.strerror or error}") from None
    return path


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
    """Write a run folder (the folder must come from :func:`prepare_run_folder`).

    ``config.json`` is written last, so a folder without it is recognisably incomplete.
    """
    from . import __version__

    path = Path(path)
    config = {
        "format_version": FORMAT_VERSION,
        "pyro_genmod_version": __version__,
        "model": {"name": model.registry_name, "options": model.init_kwargs},
        "guide": {"name": guide.registry_name, "options": guide.init_kwargs},
        "dataset": {"name": data.name, "options": data.options},
        **config,
    }
    try:
        _atomic_write(path / "params.safetensors", lambda tmp: save_file(_params(model, guide), tmp))
        atomic_write_text(path / "history.csv", _history_csv(history))
        atomic_write_text(path / "metrics.json", json.dumps(metrics, indent=2) + "\n")
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


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"cannot read '{path}': {error}") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"'{path}' does not hold a JSON object")
    return value


def load_run(path, data: Dataset | None = None) -> Run:
    """Load a run folder; ``data`` overrides reloading the dataset named in its config.

    Parameters are read with safetensors, which never unpickles objects.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder '{path}' does not exist")
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise RunFolderError(
            f"run folder '{path}' is incomplete: missing {', '.join(missing)} (was training "
            f"interrupted?)"
        )
    config = _read_json(path / "config.json")
    metrics = _read_json(path / "metrics.json")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise RunFolderError(
            f"run folder '{path}' has format version {version!r}, but this pyro-genmod reads "
            f"version {FORMAT_VERSION}; re-run it with this version"
        )
    try:
        model_cfg, guide_cfg, data_cfg = config["model"], config["guide"], config["dataset"]
        if data is None:
            data = load_dataset(data_cfg["name"], **data_cfg.get("options", {}))
        model = create_model(model_cfg["name"], data, **model_cfg.get("options", {}))
        guide = create_guide(guide_cfg["name"], model, **guide_cfg.get("options", {}))
    except (KeyError, TypeError) as error:
        raise RunFolderError(f"run folder '{path}' has an invalid config.json ({error!r})") from None
    except GenmodError as error:
        raise RunFolderError(f"cannot rebuild the run in '{path}': {error}") from None
    try:
        tensors = load_file(str(path / "params.safetensors"))
    except (SafetensorError, OSError, ValueError) as error:
        raise RunFolderError(f"'{path / 'params.safetensors'}' is not a readable safetensors file: {error}") from None
    for prefix, module in (("model.", model), ("guide.", guide)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise RunFolderError(f"parameters in '{path}' do not match the rebuilt {prefix[:-1]}: {first}") from None
    model.eval(), guide.eval()
    return Run(path=path, config=config, metrics=metrics, model=model, guide=guide, data=data)

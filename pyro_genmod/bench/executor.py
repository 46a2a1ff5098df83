"""Running a benchmark grid: each cell trained (or loaded from its run folder), scored and recorded."""

from __future__ import annotations

import json
import math
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_genmod.datasets import Dataset, load_dataset
from pyro_genmod.errors import GenmodError, RunFolderError
from pyro_genmod.estimates import bits_per_dim
from pyro_genmod.factories import create_guide, create_model
from pyro_genmod.folders import FolderLock
from pyro_genmod.runs import load_run, prepare_run_folder, save_run
from pyro_genmod.tasks import encode
from pyro_genmod.tracking import RunInfo, create_loggers
from pyro_genmod.train import fit

from .config import BenchConfig, Cell
from .metrics import (
    active_units,
    ais_columns,
    blockwise_log_likelihood,
    kl_per_dimension,
    linear_probe_accuracy,
)
from .provenance import code_version, machine
from .report import RESULT_FILE, read_result, write_result
from .settings import StaleCellsError, evaluation_changes, evaluation_settings, training_changes

__all__ = ["check_trained_settings", "pending_cells", "run_cell", "run_cells"]


def _names_code_of(folder: Path, cell: Cell) -> bool:
    """Whether the cell's run folder names exactly the model and guide the config names: user code
    the config itself names may then be imported to load it (any other code is refused)."""

    try:
        saved = json.loads((folder / "config.json").read_text())
        return saved["model"]["name"] == cell.model and saved["guide"]["name"] == cell.guide
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _train_or_resume(cell: Cell, config: BenchConfig, data: Dataset, folder: Path, progress: bool):
    """A trained (model, guide, epochs, seconds): loaded from ``folder`` when a finished run is there
    (one trained with other settings than the config's is refused: :class:`StaleCellsError`)."""
    if (folder / "config.json").is_file():
        if changes := training_changes(config, cell, folder):
            raise StaleCellsError(folder.parent, {cell.id: changes})
        run = load_run(folder, data=data, trust_code=_names_code_of(folder, cell))
        return run.model, run.guide, run.metrics["epochs"], run.metrics["train_seconds"]
    prepare_run_folder(folder, overwrite=True)
    pyro.set_rng_seed(cell.seed)  # parameter initialisation follows the seed
    model_options = config.raw.get("models", {}).get(cell.model, {})
    guide_options = config.raw.get("guides", {}).get(cell.guide, {})
    model = create_model(cell.model, data, **model_options)
    guide = create_guide(cell.guide, model, **guide_options)
    loggers = _cell_loggers(cell, config, data, folder, model_options, guide_options)
    try:
        result = fit(
            model, guide, data, seed=cell.seed, objective=cell.objective_name, num_particles=cell.k,
            progress=progress, callbacks=loggers, **config.options(cell, "training"),
        )
        metrics = {
            "epochs": result.epochs_run, "train_seconds": result.train_seconds,
            "stopped_reason": result.stopped_reason,
        }
        save_run(
            folder, model=model, guide=guide, data=data, metrics=metrics, history=result.history,
            config={"training": result.options, "bench_cell": cell.id},
        )
    except BaseException as error:
        for logger in loggers:
            logger.finish(error=error)
        raise
    for logger in loggers:
        logger.finish(saved=folder)
    return model, guide, result.epochs_run, result.train_seconds


def _cell_loggers(cell: Cell, config: BenchConfig, data: Dataset, folder: Path, model_options, guide_options):
    """The config's loggers for a cell: into its run folder, and for MLflow one run per cell in
    the experiment named after the grid, its store in the grid's runs folder."""
    if not config.raw.get("logger"):
        return []
    params = {
        "model": {"name": cell.model, "options": model_options},
        "guide": {"name": cell.guide, "options": guide_options},
        "dataset": {"name": data.name, "options": data.options},
        "bench": {"config": config.name, "cell": cell.id},
    }
    tags = {"dataset": cell.dataset, "model": cell.model, "guide": cell.guide, "objective": cell.objective_name,
            "k": cell.k, "seed": cell.seed, "bench": config.name}
    run = RunInfo(folder, cell.id, params=params, tags=tags, experiment=config.name, store=config.runs_folder(),
                  every_n_steps=config.raw.get("log_every", 50))
    loggers = create_loggers(config.raw["logger"], run)
    for logger in loggers:
        logger.hold_open = True  # finished once the run folder is saved
    return loggers


def run_cell(cell: Cell, config: BenchConfig, data: Dataset, folder: Path, progress: bool = True) -> dict:
    """Train (or reload) one cell, score its test set and compute the representation metrics."""
    model, guide, epochs, train_seconds = _train_or_resume(cell, config, data, folder, progress)
    opts = config.options(cell, "evaluation")
    test = data.test[: opts["max_points"]] if opts["max_points"] else data.test
    labels = data.test_labels[: test.shape[0]] if data.test_labels is not None else None
    proposal = create_guide("prior", model) if getattr(guide, "is_point_estimate", False) else guide
    K, seed, block = opts["num_samples"], opts["seed"], opts["eval_block"]
    ll, eval_seconds = blockwise_log_likelihood(
        model, proposal, test, K, seed=seed, block=block, khat_points=opts["khat_points"],
        folder=folder / f"eval-K{K}-seed{seed}-block{block}",
    )
    summary = ll.summary()
    khat = ll.khat[np.isfinite(ll.khat)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    test = test.to(device)  # fit may have moved the pair to a GPU
    means = encode(guide, test).cpu()
    row = {
        "epochs": epochs, "train_seconds": train_seconds, "eval_K": opts["num_samples"],
        "eval_points": test.shape[0], "eval_seconds": eval_seconds, "test_elbo": summary["elbo"],
        "test_nll": -summary["log_likelihood"], "test_nll_stderr": summary["log_likelihood_stderr"],
        "khat_mean": float(khat.mean()) if khat.size else None,
        "khat_above_0.7": float((khat > 0.7).mean()) if khat.size else None, "khat_points": khat.size,
        "active_units": active_units(means), "latent_dims": means.shape[1],
        **ais_columns(model, proposal, test, ll, opts, folder),  # none unless methods lists "ais"
    }
    if data.is_image:
        row["test_bits_per_dim"] = bits_per_dim(summary["log_likelihood"], math.prod(data.shape))
    if not getattr(guide, "is_point_estimate", False):
        row["kl_per_dim"] = kl_per_dimension(model, guide, test, opts["kl_samples"], seed=opts["seed"])
    if labels is not None and data.train_labels is not None:
        generator = torch.Generator().manual_seed(opts["seed"])
        train_x = data.training_batch(data.train[: opts["probe_points"]], generator)
        row["probe_accuracy"] = linear_probe_accuracy(
            encode(guide, train_x.to(device)).cpu(), data.train_labels[: train_x.shape[0]], means, labels,
            seed=opts["seed"],
        )
    return row


def _loader_parameters(name: str) -> set[str]:
    import inspect

    from pyro_genmod._registry import dataset_loader

    return set(inspect.signature(dataset_loader(name)).parameters)


_DATASETS: dict[tuple, Dataset] = {}  # per process: a worker loads each dataset once


def _dataset(config: BenchConfig, name: str, data_root) -> Dataset:
    options = dict(config.raw.get("datasets", {}).get(name, {}))
    if data_root is not None and "root" in _loader_parameters(name):
        options["root"] = str(data_root)
    key = (name, json.dumps(options, sort_keys=True, default=str))
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(name, **options)
    return _DATASETS[key]


def _run_one(cell: Cell, config: BenchConfig, data_root, progress: bool) -> dict:
    """The cell's result row: its metrics and ``status = "ok"``, or ``"failed"`` with the error."""
    row = {
        "cell": cell.id, "dataset": cell.dataset, "model": cell.model, "guide": cell.guide,
        "objective": cell.objective_name, "k": cell.k, "seed": cell.seed,
    }
    try:
        row.update(run_cell(cell, config, _dataset(config, cell.dataset, data_root), config.cell_folder(cell), progress))
        row["status"] = "ok"
    except (GenmodError, RuntimeError, ValueError, TypeError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        row.update(status="failed", error=f"{type(error).__name__}: {message}")
    row["evaluation"] = evaluation_settings(config, cell)  # what it was scored with (a rerun compares)
    row["attempt"] = uuid.uuid4().hex  # names this result, so --retry-failed reruns it only once
    row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    row["code"], row["machine"] = code_version(), machine()  # named under the table (provenance)
    return row


def run_cells(
    config: BenchConfig, cell_ids: list[str], retry: dict[str, str] | None = None, data_root=None,
    progress: bool = False,
) -> list[dict]:
    """Claim and run cells of ``config`` (the work of one worker, in any process on any machine
    that sees the runs folder). Returns ``{"cell", "outcome", "error"}`` for each: ``ok`` or
    ``failed`` (run here), ``skipped`` (it already has a result), ``busy`` (another worker holds it)
    or ``stale`` (trained with other settings than the config's: left untouched, see
    :mod:`~pyro_genmod.bench.settings`). A result scored with other ``[evaluation]`` settings is
    scored again from the trained run; the previous one is kept as ``result-<attempt>.json``.

    A cell is claimed by locking its run folder (:class:`~pyro_genmod.folders.FolderLock`); the
    result is written atomically to ``result.json`` before the lock is released. The kernel drops
    the lock of a killed worker, so its cell is claimed again by the next worker, which finds no
    result and runs it (a finished training is reloaded, finished evaluation blocks are kept).
    ``retry`` maps a failed cell to the ``attempt`` of its failed result: it is run again only
    while that result is still the one on disk (so two retrying processes run it once).
    """
    cells = {cell.id: cell for cell in config.cells()}
    retry = retry or {}
    report = []
    for cell_id in cell_ids:
        cell = cells[cell_id]
        folder = config.cell_folder(cell)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = FolderLock(folder, "bench cell").acquire(patience=0)
        except RunFolderError as error:
            if not hasattr(error, "pid"):  # not held, but cannot be locked at all
                raise
            report.append({"cell": cell_id, "outcome": "busy"})
            continue
        try:
            if changes := training_changes(config, cell, folder):
                error = StaleCellsError(folder.parent, {cell_id: changes})
                report.append({"cell": cell_id, "outcome": "stale", "error": str(error)})
                continue
            existing = read_result(folder)
            if existing is not None and existing.get("status") == "ok" and evaluation_changes(config, cell, existing):
                _keep_previous(folder, existing)
                existing = None
            if existing is not None and not (
                existing.get("status") == "failed" and existing.get("attempt") is not None
                and retry.get(cell_id) == existing.get("attempt")
            ):
                report.append({"cell": cell_id, "outcome": "skipped"})
                continue
            for leftover in folder.glob("eval-*/.points-*.npz.*"):  # blocks a killed worker was writing
                leftover.unlink(missing_ok=True)
            row = _run_one(cell, config, data_root, progress)
            write_result(folder, row)
            report.append({"cell": cell_id, "outcome": row["status"], "error": row.get("error")})
        finally:
            lock.release()
    return report


def _keep_previous(folder: Path, row: dict) -> None:
    """Move a result aside (never overwritten) before its cell is scored again."""
    name = f"result-{row.get('attempt') or uuid.uuid4().hex}.json"
    os.replace(folder / RESULT_FILE, folder / name)


def check_trained_settings(config: BenchConfig, only: str | None = None) -> None:
    """Refuse (:class:`StaleCellsError`) a grid whose runs folder holds cells trained with other
    settings than the config now gives, before anything runs or is rewritten."""
    stale = {}
    for cell in config.cells():
        if (only is None or only in cell.id) and (changes := training_changes(config, cell, config.cell_folder(cell))):
            stale[cell.id] = changes
    if stale:
        raise StaleCellsError(config.runs_folder(), stale)


def pending_cells(config: BenchConfig, retry_failed: bool = False, only: str | None = None) -> tuple[list[str], dict]:
    """The ids of the cells that have no result (or a failed one, with ``retry_failed``, or one
    scored with other ``[evaluation]`` settings than the config's), and the failed results'
    attempts to retry."""
    pending, retry = [], {}
    for cell in config.cells():
        if only is not None and only not in cell.id:
            continue
        result = read_result(config.cell_folder(cell))
        if result is None or (result.get("status") == "ok" and evaluation_changes(config, cell, result)):
            pending.append(cell.id)
        elif retry_failed and result.get("status") != "ok":
            pending.append(cell.id)
            retry[cell.id] = result.get("attempt")
    return pending, retry

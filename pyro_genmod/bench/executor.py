"""Running a benchmark grid: each cell trained (or loaded from its run folder), scored and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyro_genmod.datasets import Dataset, load_dataset
from pyro_genmod.errors import GenmodError
from pyro_genmod.factories import create_guide, create_model
from pyro_genmod.runs import load_run, prepare_run_folder, save_run
from pyro_genmod.tasks import encode
from pyro_genmod.train import fit

from .config import BenchConfig, Cell, load_config
from .metrics import active_units, blockwise_log_likelihood, kl_per_dimension, linear_probe_accuracy
from .report import read_rows, write_results

__all__ = ["run_cell", "run_bench"]


def _names_code_of(folder: Path, cell: Cell) -> bool:
    """Whether the cell's run folder names exactly the model and guide the config names: user code
    the config itself names may then be imported to load it (any other code is refused)."""

    try:
        saved = json.loads((folder / "config.json").read_text())
        return saved["model"]["name"] == cell.model and saved["guide"]["name"] == cell.guide
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _train_or_resume(cell: Cell, config: BenchConfig, data: Dataset, folder: Path, progress: bool):
    """A trained (model, guide, epochs, seconds): loaded from ``folder`` when a finished run is there."""
    if (folder / "config.json").is_file():
        run = load_run(folder, data=data, trust_code=_names_code_of(folder, cell))
        return run.model, run.guide, run.metrics["epochs"], run.metrics["train_seconds"]
    prepare_run_folder(folder, overwrite=True)
    pyro.set_rng_seed(cell.seed)  # parameter initialisation follows the seed
    model = create_model(cell.model, data, **config.raw.get("models", {}).get(cell.model, {}))
    guide = create_guide(cell.guide, model, **config.raw.get("guides", {}).get(cell.guide, {}))
    result = fit(
        model, guide, data, seed=cell.seed, objective=cell.objective_name, num_particles=cell.k,
        progress=progress, **config.options(cell, "training"),
    )
    metrics = {
        "epochs": result.epochs_run, "train_seconds": result.train_seconds,
        "stopped_reason": result.stopped_reason,
    }
    save_run(
        folder, model=model, guide=guide, data=data, metrics=metrics, history=result.history,
        config={"training": result.options, "bench_cell": cell.id},
    )
    return model, guide, result.epochs_run, result.train_seconds


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
    }
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


def run_bench(
    config: str | Path | BenchConfig, *, results_dir: str | Path | None = None,
    retry_failed: bool = False, progress: bool = True, only: str | None = None,
    data_root: str | Path | None = None,
) -> list[dict]:
    """Run every cell of a benchmark grid that has no result yet; return all rows as saved (strings).

    Results go to ``RESULTS/NAME.csv`` and ``RESULTS/NAME.md`` after every cell, and trained
    parameters to ``RUNS/<cell>/`` (a run folder; ``runs_dir``, by default ``runs/NAME``; two
    configs naming the same ``runs_dir`` share trained runs), so an interrupted grid resumes where it
    stopped: finished cells are skipped, and a cell whose training finished is only scored.
    A cell that raises is recorded as ``failed`` with its error and the grid carries on;
    ``retry_failed`` runs such cells again. ``only`` keeps the cells whose id contains it, so
    that separate processes can share a grid (each merges its rows into the files on writing).
    ``data_root`` is the folder of downloaded datasets (the ``root`` option of every dataset that
    takes one; otherwise ``$GENMOD_DATA_ROOT``), so configs hold no machine's paths.
    """
    config = config if isinstance(config, BenchConfig) else load_config(config)
    results = Path(results_dir) if results_dir is not None else config.folder("results_dir", "results")
    runs = config.folder("runs_dir", f"runs/{config.name}")
    results.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = results / f"{config.name}.csv", results / f"{config.name}.md"
    rows = read_rows(csv_path)
    done = {"ok", "failed"} if not retry_failed else {"ok"}
    pending = [
        cell for cell in config.cells()
        if rows.get(cell.id, {}).get("status") not in done and (only is None or only in cell.id)
    ]
    datasets: dict[str, Dataset] = {}
    bar = tqdm(pending, unit="cell", disable=None if progress else True)
    for cell in bar:
        bar.set_description(cell.id)
        published = config.published(cell)
        row = {
            "cell": cell.id, "dataset": cell.dataset, "model": cell.model, "guide": cell.guide,
            "objective": cell.objective_name, "k": cell.k, "seed": cell.seed,
            "published_nll": published.get("nll"), "published_budget": published.get("budget"),
            "published_source": published.get("source"),
        }
        try:
            if cell.dataset not in datasets:
                options = dict(config.raw.get("datasets", {}).get(cell.dataset, {}))
                if data_root is not None and "root" in _loader_parameters(cell.dataset):
                    options["root"] = data_root
                datasets[cell.dataset] = load_dataset(cell.dataset, **options)
            slug = cell.id.replace("/", "__")
            row.update(run_cell(cell, config, datasets[cell.dataset], runs / slug, progress))
            row["status"] = "ok"
        except (GenmodError, RuntimeError, ValueError, TypeError, OSError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            row.update(status="failed", error=f"{type(error).__name__}: {message}")
            tqdm.write(f"cell {cell.id} failed: {row['error']}")
        rows = {**read_rows(csv_path), cell.id: row}  # keep rows another process wrote meanwhile
        write_results(config, rows, csv_path, md_path)
    bar.close()
    if not pending:
        write_results(config, rows, csv_path, md_path)
    return list(read_rows(csv_path).values())

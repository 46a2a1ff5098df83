"""Benchmark grids: datasets x models x guides x objectives x seeds from TOML, resumable, to CSV and Markdown.

A config (see ``benchmarks/configs/``)::

    name = "digits-smoke"
    [grid]
    datasets = ["digits"]
    models = ["vae"]
    guides = ["mean_field"]
    objectives = ["trace_elbo", "iwae:5"]    # "NAME:k" trains with k particles
    seeds = [0]
    [training]      # passed to pyro_genmod.fit: epochs, batch_size, lr, early_stopping, device
    [evaluation]    # num_samples (IS K), seed, max_points, khat_points, eval_block, probe_points,
                    # kl_samples
    [datasets.digits]   # options per dataset; [models.vae] and [guides.mean_field] likewise
    [[overrides]]   # match = {objective = "iwae:50"}, then training/evaluation options
    [[published]]   # dataset, model, objective, nll, budget, source: shown beside our rows
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from .data import Dataset, load_dataset
from .densities import latent_log_ratios
from .errors import ConfigError, GenmodError
from .factories import create_guide, create_model
from .importance import LogLikelihood, log_likelihood
from .runs import atomic_write_text, load_run, prepare_run_folder, save_run
from .seeding import seeded
from .tasks import encode
from .train import fit

__all__ = [
    "Cell", "BenchConfig", "load_config", "run_bench", "markdown_table", "blockwise_log_likelihood",
    "active_units", "kl_per_dimension", "linear_probe_accuracy",
]

COLUMNS = [
    "cell", "status", "dataset", "model", "guide", "objective", "k", "seed", "epochs",
    "train_seconds", "eval_K", "eval_points", "eval_seconds", "test_elbo", "test_nll",
    "test_nll_stderr", "khat_mean", "khat_above_0.7", "khat_points", "active_units", "latent_dims",
    "kl_per_dim", "probe_accuracy", "published_nll", "published_budget", "published_source", "error",
]
_TOP_KEYS = {"name", "title", "notes", "results_dir", "runs_dir", "grid", "training", "evaluation",
             "datasets", "models", "guides", "overrides", "published"}
_EVAL_DEFAULTS = {
    "num_samples": 1000, "seed": 0, "max_points": None, "khat_points": None, "eval_block": 500,
    "probe_points": 10000, "kl_samples": 16,
}


@dataclass(frozen=True)
class Cell:
    """One point of the grid; ``objective`` is the spec as written (``"iwae:5"``), ``k`` its particles."""

    dataset: str
    model: str
    guide: str
    objective: str
    seed: int

    @property
    def objective_name(self) -> str:
        return self.objective.partition(":")[0]

    @property
    def k(self) -> int:
        _, sep, k = self.objective.partition(":")
        return int(k) if sep else 1

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.model}/{self.guide}/{self.objective_name}-k{self.k}/seed{self.seed}"


@dataclass
class BenchConfig:
    """A parsed benchmark config; ``path`` is where it was read from."""

    path: Path
    raw: dict

    @property
    def name(self) -> str:
        return self.raw["name"]

    def cells(self) -> list[Cell]:
        grid = self.raw["grid"]
        return [
            Cell(*combo)
            for combo in itertools.product(
                grid["datasets"], grid["models"], grid["guides"], grid["objectives"], grid.get("seeds", [0])
            )
        ]

    def options(self, cell: Cell, section: str) -> dict:
        """``training`` or ``evaluation`` options for ``cell``, with matching overrides applied."""
        merged = dict(_EVAL_DEFAULTS) if section == "evaluation" else {}
        merged.update(self.raw.get(section, {}))
        for override in self.raw.get("overrides", []):
            match = override.get("match", {})
            if all(str(getattr(cell, key, None)) == str(value) for key, value in match.items()):
                merged.update(override.get(section, {}))
        return merged

    def published(self, cell: Cell) -> dict:
        for entry in self.raw.get("published", []):
            keys = ("dataset", "model", "objective_name", "k")
            wanted = {**entry, "objective_name": entry.get("objective", cell.objective_name)}
            if all(wanted.get(key, getattr(cell, key)) == getattr(cell, key) for key in keys):
                return entry
        return {}

    def folder(self, key: str, default: str) -> Path:
        """Results or runs folder: relative paths are taken from the folder above ``configs/``."""
        base = self.path.parent.parent if self.path.parent.name == "configs" else self.path.parent
        value = Path(self.raw.get(key, default))
        return value if value.is_absolute() else base / value


def load_config(path: str | Path) -> BenchConfig:
    """Read and check a benchmark TOML file; a problem raises :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read benchmark config '{path}': {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"benchmark config '{path}' is not valid TOML: {error}") from None
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"benchmark config '{path}' has unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    if not isinstance(raw.get("name"), str) or not raw["name"].replace("-", "").replace("_", "").isalnum():
        raise ConfigError(
            f"benchmark config '{path}' needs a name of letters, digits, '-' and '_' (it names the "
            f"result files)"
        )
    grid = raw.get("grid", {})
    for key in ("datasets", "models", "guides", "objectives"):
        if not isinstance(grid.get(key), list) or not grid[key]:
            raise ConfigError(f"benchmark config '{path}': [grid] needs a non-empty list '{key}'")
    for spec in grid["objectives"]:
        name, sep, k = str(spec).partition(":")
        if sep and not (k.isdigit() and int(k) > 0):
            raise ConfigError(
                f"objective '{spec}' in '{path}': write NAME or NAME:k with k a positive integer"
            )
    for key in set(raw.get("evaluation", {})) - set(_EVAL_DEFAULTS):
        raise ConfigError(
            f"[evaluation] in '{path}' has no option '{key}'; its options are {sorted(_EVAL_DEFAULTS)}"
        )
    return BenchConfig(path=path, raw=raw)


def active_units(means: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al.'s active units: dimensions u with Cov_x(E_q[u | x]) above ``threshold``.

    References:
        | Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015) https://arxiv.org/abs/1509.00519

    Arguments:
        means: posterior means E_q[z | x], shape ``(N, D)``.
        threshold: variance over the data above which a unit counts as active.
    """
    return int((means.var(dim=0, unbiased=True) > threshold).sum())


def kl_per_dimension(
    model, guide, x: torch.Tensor, num_samples: int = 16, chunk: int = 1000, seed: int = 0
) -> float:
    """Monte Carlo KL(q(z|x) || p(z)) averaged over the points of ``x``, divided by the latent dimension.

    Works for any pair, including hierarchical priors: the log-density engine replays the model
    on guide draws (:func:`~pyro_genmod.densities.latent_log_ratios`), summed over the model's
    latent sites.
    """
    names = {site.name for site in model.latent_sites}
    dims = sum(math.prod(site.event_shape) or 1 for site in model.latent_sites)
    total = 0.0
    with seeded(seed):
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk]
            ratios = latent_log_ratios(model, guide, part, num_samples)
            kl = sum(ratio for name, ratio in ratios.items() if name in names)
            total += float(kl.mean(0).sum())
    return total / x.shape[0] / dims


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, seed: int = 0) -> float:
    """Test accuracy of a logistic regression fitted on standardized training features.

    A representation-quality score for q(z|x): how linearly separable the classes are in the
    posterior means.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    probe.fit(train_features.numpy(), train_labels.numpy())
    return float(probe.score(test_features.numpy(), test_labels.numpy()))


def _names_code_of(folder: Path, cell: Cell) -> bool:
    """Whether the cell's run folder names exactly the model and guide the config names: user code
    the config itself names may then be imported to load it (any other code is refused)."""
    import json

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


def blockwise_log_likelihood(
    model, proposal, x: torch.Tensor, num_samples: int, *, seed: int, block: int,
    khat_points: int | None, folder: Path,
) -> tuple[LogLikelihood, float]:
    """:func:`log_likelihood` of ``x`` in blocks of ``block`` points, each saved to ``folder`` when
    done, so a long evaluation (K=5000 on 10,000 images) can run in parts and resume.

    Block ``i`` is drawn with seed ``seed + i``; PSIS k-hat is fitted only on the blocks that
    start before ``khat_points`` (``None``: all), as it costs ~40% more than the estimate.
    Returns the estimate and the seconds spent on the blocks (including earlier parts).
    """
    if not isinstance(block, int) or block < 1:
        raise ConfigError(f"eval_block must be a positive integer, got {block!r}")
    folder.mkdir(parents=True, exist_ok=True)
    parts, seconds = [], 0.0
    for i, start in enumerate(range(0, x.shape[0], block)):
        stop = min(start + block, x.shape[0])
        path = folder / f"points-{start:06d}-{stop:06d}.npz"
        if not path.is_file():
            began = time.perf_counter()
            with_khat = khat_points is None or start < khat_points
            ll = log_likelihood(model, proposal, x[start:stop], num_samples, seed=seed + i, khat=with_khat)
            arrays = {"per_point": ll.per_point.numpy(), "elbo": ll.elbo.numpy(), "khat": ll.khat,
                      "seconds": np.array(time.perf_counter() - began)}
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
        with np.load(path, allow_pickle=False) as saved:
            parts.append({key: saved[key] for key in ("per_point", "elbo", "khat")})
            seconds += float(saved["seconds"])
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    ll = LogLikelihood(
        per_point=torch.from_numpy(joined["per_point"]), elbo=torch.from_numpy(joined["elbo"]),
        khat=joined["khat"], num_samples=num_samples,
    )
    return ll, seconds


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


def _fmt(value, digits: int = 2) -> str:
    if value in (None, ""):
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return str(value)


def _read_rows(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = {row["cell"]: row for row in csv.DictReader(handle)}
    for row in rows.values():  # results written before the column was renamed (is_nll -> test_nll)
        for old, new in (("is_nll", "test_nll"), ("is_nll_stderr", "test_nll_stderr")):
            if old in row and new not in row:
                row[new] = row.pop(old)
    return rows


def _write_results(config: BenchConfig, rows: dict[str, dict], csv_path: Path, md_path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    order = {cell.id: i for i, cell in enumerate(config.cells())}
    ordered = sorted(rows.values(), key=lambda row: order.get(row["cell"], len(order)))
    writer.writeheader()
    writer.writerows(ordered)
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_text(md_path, markdown_table(config, ordered))


def markdown_table(config: BenchConfig, rows: list[dict]) -> str:
    """The results as a Markdown document: our rows with the published numbers beside them."""
    header = (
        "| dataset | model | guide | objective | k | seed | epochs | train s | test ELBO | IS NLL | s.e. "
        "| IS K | eval points | eval s | mean k-hat | k-hat > 0.7 | k-hat points | active units | KL / dim | probe acc. "
        "| published NLL | published budget | status |"
    )
    lines = [f"# {config.raw.get('title', config.name)}", ""]
    if config.raw.get("notes"):
        lines += [config.raw["notes"].strip(), ""]
    lines += [
        "NLL = -log p(x) in nats per test point (lower is better), importance-sampled with IS K "
        "draws from q(z|x); k = training particles; active units: dimensions with posterior-mean "
        "variance over the test set above 0.01; probe acc.: logistic regression on posterior means.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for row in rows:
        units = row.get("active_units")
        units = "–" if units in (None, "") else f"{units}/{row.get('latent_dims')}"
        share = row.get("khat_above_0.7")
        cells = [
            row["dataset"], row["model"], row["guide"], row["objective"], row["k"], row["seed"],
            _fmt(row.get("epochs"), 0), _fmt(row.get("train_seconds"), 1), _fmt(row.get("test_elbo")),
            _fmt(row.get("test_nll")), _fmt(row.get("test_nll_stderr")), _fmt(row.get("eval_K"), 0),
            _fmt(row.get("eval_points"), 0), _fmt(row.get("eval_seconds"), 1), _fmt(row.get("khat_mean")),
            "–" if share in (None, "") else f"{100 * float(share):.1f}%", _fmt(row.get("khat_points"), 0),
            units,
            _fmt(row.get("kl_per_dim"), 3), _fmt(row.get("probe_accuracy"), 3),
            _fmt(row.get("published_nll")), row.get("published_budget") or "–",
            row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('error', '')}",
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    sources = sorted({row["published_source"] for row in rows if row.get("published_source")})
    if sources:
        lines += ["", "Published numbers: " + "; ".join(sources) + "."]
    return "\n".join(lines) + "\n"


def _loader_parameters(name: str) -> set[str]:
    import inspect

    from ._registry import dataset_loader

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
    rows = _read_rows(csv_path)
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
        rows = {**_read_rows(csv_path), cell.id: row}  # keep rows another process wrote meanwhile
        _write_results(config, rows, csv_path, md_path)
    bar.close()
    if not pending:
        _write_results(config, rows, csv_path, md_path)
    return list(_read_rows(csv_path).values())

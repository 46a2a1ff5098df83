"""Benchmark results: one ``result.json`` per cell, collected into the CSV and the Markdown table
beside published numbers.

Each cell writes its own result file atomically in its run folder (``RUNS/<cell>/result.json``);
nothing rewrites a shared file by read-modify-write. :func:`collect` builds ``NAME.csv`` and
``NAME.md`` from the cell files, under a lock so that two collects never interleave.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pyro_genmod.errors import RunFolderError
from pyro_genmod.folders import FolderLock, atomic_write_text

from .config import BenchConfig, Cell

__all__ = [
    "COLUMNS",
    "RESULT_FILE",
    "collect",
    "markdown_table",
    "read_result",
    "read_rows",
    "write_result",
    "write_results",
]

RESULT_FILE = "result.json"
PARAMS_FILE = "params.safetensors"  # a cell's trained pair, saved by pyro_genmod.runs
_MIGRATED = ".results-from-csv"  # in the runs folder: the old CSV's rows were moved to result files

COLUMNS = [
    "cell", "status", "dataset", "model", "guide", "objective", "k", "seed", "epochs",
    "train_seconds", "eval_K", "eval_points", "eval_seconds", "test_elbo", "test_nll",
    "test_nll_stderr", "khat_mean", "khat_above_0.7", "khat_points", "active_units", "latent_dims",
    "kl_per_dim", "probe_accuracy", "published_nll", "published_budget", "published_source", "error",
    # AIS beside IS, when the config's [evaluation] methods lists "ais"
    "ais_nll", "ais_nll_stderr", "ais_mc_stderr", "ais_steps", "ais_chains", "ais_leapfrog", "ais_points",
    "ais_seconds", "ais_acceptance", "is_minus_ais_nll", "is_minus_ais_nll_khat_above_0.7",
    # image data: the IS estimate in bits per dimension (-log2 p(x) / pixels)
    "test_bits_per_dim",
    # provenance: the code (version, git commit) and machine that made the row
    "code", "machine",
]
_AIS_HEADER = " | AIS NLL | AIS s.e. | AIS MC s.e. | AIS steps | AIS chains | AIS points | AIS s | IS - AIS | IS - AIS, k-hat > 0.7"

def _fmt(value, digits: int = 2) -> str:
    if value in (None, ""):
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return str(value)


def read_rows(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = {row["cell"]: row for row in csv.DictReader(handle)}
    for row in rows.values():  # results written before the column was renamed (is_nll -> test_nll)
        for old, new in (("is_nll", "test_nll"), ("is_nll_stderr", "test_nll_stderr")):
            if old in row and new not in row:
                row[new] = row.pop(old)
    return rows


def write_results(config: BenchConfig, rows: dict[str, dict], csv_path: Path, md_path: Path) -> None:
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
    with_ais = any(row.get("ais_nll") not in (None, "") for row in rows)
    with_bits = any(row.get("test_bits_per_dim") not in (None, "") for row in rows)
    if with_bits:  # image data: the IS NLL in bits per dimension after its standard error
        header = header.replace("| IS NLL | s.e. |", "| IS NLL | s.e. | IS bits/dim |")
    if with_ais:  # the AIS columns before the status
        header = header[: -len(" | status |")] + _AIS_HEADER + " | status |"
    lines = [f"# {config.raw.get('title', config.name)}", ""]
    if config.raw.get("notes"):
        lines += [config.raw["notes"].strip(), ""]
    lines += [
        "NLL = -log p(x) in nats per test point (lower is better), importance-sampled with IS K "
        "draws from q(z|x); k = training particles; active units: dimensions with posterior-mean "
        "variance over the test set above 0.01; probe acc.: logistic regression on posterior means."
        + (" AIS: annealed importance sampling from q(z|x) to p(z|x) with HMC (AIS steps intermediate "
           "distributions, AIS chains per point) on the first AIS points test points; AIS s.e. is over "
           "points, AIS MC s.e. the mean per-point Monte Carlo error across chains; IS - AIS = IS NLL "
           "minus AIS NLL on the same points (nats IS misses), overall and where IS k-hat is above 0.7."
           if with_ais else ""),
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
            _fmt(row.get("test_nll")), _fmt(row.get("test_nll_stderr")),
            *([_fmt(row.get("test_bits_per_dim"), 4)] if with_bits else []), _fmt(row.get("eval_K"), 0),
            _fmt(row.get("eval_points"), 0), _fmt(row.get("eval_seconds"), 1), _fmt(row.get("khat_mean")),
            "–" if share in (None, "") else f"{100 * float(share):.1f}%", _fmt(row.get("khat_points"), 0),
            units,
            _fmt(row.get("kl_per_dim"), 3), _fmt(row.get("probe_accuracy"), 3),
            _fmt(row.get("published_nll")), row.get("published_budget") or "–",
        ]
        if with_ais:
            cells += [
                _fmt(row.get("ais_nll")), _fmt(row.get("ais_nll_stderr")), _fmt(row.get("ais_mc_stderr")),
                _fmt(row.get("ais_steps"), 0), _fmt(row.get("ais_chains"), 0), _fmt(row.get("ais_points"), 0),
                _fmt(row.get("ais_seconds"), 1), _fmt(row.get("is_minus_ais_nll")),
                _fmt(row.get("is_minus_ais_nll_khat_above_0.7")),
            ]
        cells.append(row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('error', '')}")
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    made = _provenance(rows)
    if made:
        lines += ["", made]
    sources = sorted({row["published_source"] for row in rows if row.get("published_source")})
    if sources:
        lines += ["", "Published numbers: " + "; ".join(sources) + "."]
    return "\n".join(lines) + "\n"




def _provenance(rows: list[dict]) -> str:
    """"Made with CODE on MACHINE (N rows)", for each code and machine among the rows that record them."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.get("code") or row.get("machine"):
            key = (row.get("code") or "unrecorded code", row.get("machine") or "an unrecorded machine")
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    unrecorded = len(rows) - sum(counts.values())
    parts = [f"{code} on {where} ({n} row{'s' if n > 1 else ''})" for (code, where), n in counts.items()]
    if unrecorded:
        parts.append(f"not recorded for {unrecorded} row{'s' if unrecorded > 1 else ''} made before rows named it")
    return "Made with " + "; ".join(parts) + "."


def read_result(folder: Path) -> dict | None:
    """The row a cell wrote in its run folder, or ``None`` while it has none."""
    try:
        row = json.loads((Path(folder) / RESULT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # never half-written (atomic), so a foreign or damaged file
        raise RunFolderError(f"cannot read cell result '{Path(folder) / RESULT_FILE}': {error}") from None
    return row if isinstance(row, dict) else None


def write_result(folder: Path, row: dict) -> None:
    atomic_write_text(Path(folder) / RESULT_FILE, json.dumps(row, indent=2, default=_plain) + "\n")


def _plain(value):
    try:
        return value.item()  # numpy and torch scalars
    except AttributeError:
        return str(value)


def _published(config: BenchConfig, cell: Cell) -> dict:
    published = config.published(cell)
    return {
        "published_nll": published.get("nll"), "published_budget": published.get("budget"),
        "published_source": published.get("source"),
    }


def _migrate_csv_rows(config: BenchConfig, csv_path: Path) -> None:
    """Once per runs folder: the rows of a CSV written before cells had result files become
    result files (so finished cells of an old grid stay finished).

    Only for cells that ran in this runs folder: a finished row needs its trained parameters in
    the cell's folder, a failed one the folder itself. A CSV made from other run folders (a
    committed table, another machine's grid, an earlier ``runs_dir``) is never taken as this
    grid's results: those cells run."""
    runs = config.runs_folder()
    marker = runs / _MIGRATED
    if marker.exists():
        return
    old = read_rows(csv_path)
    for cell in config.cells():
        row = old.get(cell.id)
        folder = config.cell_folder(cell)
        if row is None or row.get("status") not in ("ok", "failed") or (folder / RESULT_FILE).exists():
            continue
        ran_here = (folder / PARAMS_FILE).is_file() if row["status"] == "ok" else folder.is_dir()
        if not ran_here:
            continue
        try:
            lock = FolderLock(folder, "bench cell").acquire(patience=0)
        except RunFolderError:
            continue  # a worker is running it: its own result will come
        try:
            if not (folder / RESULT_FILE).exists():
                write_result(folder, {key: value for key, value in row.items() if value != ""})
        finally:
            lock.release()
    runs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, "rows of the CSV written before result files were moved to result.json\n")


def collect(config: BenchConfig, results_dir: str | Path | None = None) -> list[dict]:
    """Build ``RESULTS/NAME.csv`` and ``NAME.md`` from the cells' result files; return the rows as
    saved (strings), in grid order. Cells without a result yet are left out."""
    results = Path(results_dir) if results_dir is not None else config.folder("results_dir", "results")
    results.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = results / f"{config.name}.csv", results / f"{config.name}.md"
    runs = config.runs_folder()
    runs.mkdir(parents=True, exist_ok=True)
    # one collect at a time: a later collect reads every result written before it began, and its
    # table is the one left on disk (an earlier, staler one cannot land after it)
    (runs / ".collect").mkdir(exist_ok=True)
    lock = FolderLock(runs / ".collect", "bench results").acquire(patience=600)
    try:
        _migrate_csv_rows(config, csv_path)
        rows = {}
        for cell in config.cells():
            row = read_result(config.cell_folder(cell))
            if row is not None:
                rows[cell.id] = {**row, **_published(config, cell), "cell": cell.id}
        write_results(config, rows, csv_path, md_path)
    finally:
        lock.release()
    return list(read_rows(csv_path).values())


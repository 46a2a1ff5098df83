"""Benchmark results: the CSV (merged across processes) and the Markdown table beside published numbers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pyro_genmod.folders import atomic_write_text

from .config import BenchConfig

__all__ = ["COLUMNS", "markdown_table", "read_rows", "write_results"]

COLUMNS = [
    "cell", "status", "dataset", "model", "guide", "objective", "k", "seed", "epochs",
    "train_seconds", "eval_K", "eval_points", "eval_seconds", "test_elbo", "test_nll",
    "test_nll_stderr", "khat_mean", "khat_above_0.7", "khat_points", "active_units", "latent_dims",
    "kl_per_dim", "probe_accuracy", "published_nll", "published_budget", "published_source", "error",
]

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



"""The zoo's results page: a sample grid for every trained cell, and ``results/zoo.md`` from the grids' tables.

Every zoo entry (issue 22) has a bench config, ``benchmarks/configs/zoo_*.toml``, one per dataset and
set of model/guide options. ``genmod bench`` trains and scores its cells and writes the config's own
table (``RESULTS/NAME.csv``). This script does the rest:

* ``grids``: for every cell of the given configs with a trained run, load it (:func:`pyro_genmod.load_run`)
  and write 64 samples from the prior (decoded means E[x|z], seed 0) as a PNG grid, the way ``genmod
  sample`` does, to ``results/zoo/CONFIG__CELL.png``; small images are scaled up.
* ``report``: rebuild ``results/zoo.md``: a summary with one row per cell (test NLL by IS, AIS where the
  config scored it, active units, the sample grid), then one section per config (its title, notes and
  full table from :func:`pyro_genmod.bench.markdown_table`, a column linking each row's grid, then the
  hand-written notes in ``results/zoo/notes/CONFIG.md`` if there are any), then the section
  "Ex-post samplers" that ``benchmarks/samplers.py`` writes (rebuilt from ``samplers_*.json`` by the same
  function, so either script can run last).

    OMP_NUM_THREADS=1 nice -n 10 genmod bench benchmarks/configs/zoo_mnist.toml --data-root DIR
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/zoo.py grids benchmarks/configs/zoo_*.toml
    python benchmarks/zoo.py report benchmarks/configs/zoo_*.toml --collect

``--runs-root DIR`` reads each config's runs from ``DIR/LAST``, ``LAST`` being the last folder of its
``runs_dir`` (``runs/zoo/mnist`` -> ``DIR/mnist``), for runs trained with ``genmod bench --runs-dir``;
``--results-dir DIR`` reads the tables from there (repeat it to fall back: a config whose table the first
folder lacks is read from the next); ``--collect`` first rebuilds each table from the runs' result files
(``genmod bench CONFIG --collect``) in the first folder. The tables behind ``zoo.md`` are committed in
``results/zoo/tables/`` (run folders are not), so that a rerun of some configs can be reported beside
the others: ``--results-dir NEW --results-dir benchmarks/results/zoo/tables``. MNIST runs load their data from
``$GENMOD_DATA_ROOT`` (or ``--data-root``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import pyro_genmod as pg
from pyro_genmod.bench import BenchConfig, collect, load_config, markdown_table
from pyro_genmod.bench.report import read_rows
from pyro_genmod.cli import _write_grid
from pyro_genmod.errors import ConfigError, GenmodError
from pyro_genmod.folders import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GRIDS = "zoo"  # under the results folder: the PNGs, and notes/CONFIG.md
NUM_SAMPLES, NROW, MIN_SIDE = 64, 8, 28  # images smaller than MIN_SIDE pixels are scaled up
BEGIN = "<!-- zoo.py: begin -->"
END = "<!-- zoo.py: end -->"


def runs_config(config: BenchConfig, runs_root: str | Path | None) -> BenchConfig:
    """``config`` with its runs under ``runs_root/LAST`` (``LAST``: the last folder of its runs_dir)."""
    if runs_root is None:
        return config
    return config.with_runs_dir(Path(runs_root) / config.runs_folder().name)


def grid_name(config: BenchConfig, cell) -> str:
    """The PNG's file name: config and cell, with only characters that need no quoting in a link."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.name}__{cell.slug}").strip("_") + ".png"


def trained(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "params.safetensors").is_file()


def write_grids(configs: list[BenchConfig], out: Path, seed: int = 0) -> list[Path]:
    """A grid of prior samples for every cell with a trained run; returns the PNGs written."""
    written, datasets = [], {}  # one load per dataset and options, shared by the cells
    for config in configs:
        for cell in config.cells():
            folder = config.cell_folder(cell)
            if not trained(folder):
                continue
            key = json.dumps(json.loads((folder / "config.json").read_text())["dataset"], sort_keys=True)
            run = pg.load_run(folder, data=datasets.get(key))
            datasets[key] = run.data
            if not run.data.is_image:
                continue
            x = pg.sample(run.model, NUM_SAMPLES, mean=True, seed=seed).detach().cpu()
            scale = max(1, MIN_SIDE // min(x.shape[-2:]))
            path = out / grid_name(config, cell)
            _write_grid(path, x, NROW, scale)
            written.append(path)
            print(f"wrote {path}", flush=True)
    return written


def _results_folder(config: BenchConfig, results_dir) -> Path:
    """Where ``config``'s table is read: ``results_dir`` (a folder, or a list searched in order for the
    first that holds ``NAME.csv``), else the config's own ``results_dir``."""
    if results_dir is None:
        return config.folder("results_dir", "results")
    folders = [Path(d) for d in ([results_dir] if isinstance(results_dir, (str, Path)) else results_dir)]
    return next((d for d in folders if (d / f"{config.name}.csv").is_file()), folders[0])


def _link(config: BenchConfig, cell_id: str, out: Path, zoo_md: Path) -> str:
    cell = next((c for c in config.cells() if c.id == cell_id), None)
    if cell is None or not (out / grid_name(config, cell)).is_file():
        return "–"
    link = Path(os.path.relpath(out / grid_name(config, cell), zoo_md.parent)).as_posix()
    return f"[{NUM_SAMPLES} samples]({link})"


def _nll(row: dict, key: str) -> str:
    value, se = row.get(key), row.get(f"{key}_stderr")
    if value in (None, ""):
        return "–"
    return f"{float(value):.2f} ± {float(se):.2f}" if se not in (None, "") else f"{float(value):.2f}"


def config_section(config: BenchConfig, rows: list[dict], out: Path, zoo_md: Path) -> str:
    """The config's table as ``genmod bench`` writes it (a level lower), with a column of grid links."""
    if not rows:
        return (f"## {config.raw.get('title', config.name)}\n\nNo results yet: `genmod bench "
                f"benchmarks/configs/{config.path.name}` has not finished a cell of this grid.\n")
    lines = markdown_table(config, rows).splitlines()
    lines[0] = "#" + lines[0]
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    lines[table[0]] += " samples |"
    lines[table[1]] += "---|"
    for i, row in zip(table[2:], rows, strict=True):
        lines[i] += f" {_link(config, row['cell'], out, zoo_md)} |"
    notes = out / "notes" / f"{config.name}.md"
    if notes.is_file():
        lines += ["", notes.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def summary(sections: list[tuple[BenchConfig, list[dict]]], out: Path, zoo_md: Path) -> str:
    lines = [
        ("| config | dataset | model | guide | objective | k | epochs | IS NLL ± s.e. | AIS NLL ± s.e. | IS K "
         "| mean k-hat | active units | samples |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, rows in sections:
        for row in rows:
            units = row.get("active_units")
            units = "–" if units in (None, "") else f"{units}/{row.get('latent_dims')}"
            ok = row.get("status") == "ok"
            khat = row.get("khat_mean")
            bits = row.get("test_bits_per_dim")
            bits = "" if bits in (None, "") else f" ({float(bits):.3f} bits/dim)"
            lines.append(
                f"| [`{config.path.stem}`](#{_anchor(config)}) | {row['dataset']} | {row['model']} | {row['guide']} "
                f"| {row['objective']} | {row['k']} | {row.get('epochs') or '–'} "
                f"| {_nll(row, 'test_nll') + bits if ok else row.get('status')} | {_nll(row, 'ais_nll')} "
                f"| {row.get('eval_K') or '–'} | {'–' if khat in (None, '') else f'{float(khat):.2f}'} | {units} "
                f"| {_link(config, row['cell'], out, zoo_md)} |"
            )
    return "\n".join(lines) + "\n"


def _anchor(config: BenchConfig) -> str:
    """GitHub's anchor for the section's heading (its title)."""
    title = config.raw.get("title", config.name).strip().lower()
    return re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-")


def _samplers_module():
    """benchmarks/samplers.py, whose ``section()`` rebuilds "Ex-post samplers" (None without its results)."""
    if not any(RESULTS.glob("samplers_*.json")):
        return None
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # benchmarks/ is no package: import samplers.py as a module
    import samplers

    return samplers


def _replace_block(text: str, begin: str, end: str, block: str, at_start: bool) -> str:
    """``text`` with its ``begin``..``end`` block replaced by ``block`` (added at the start or the end
    when it has none); everything outside the block is kept."""
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    if at_start:
        return block + ("\n\n" + text.lstrip("\n") if text.strip() else "\n")
    return text.rstrip("\n") + "\n\n" + block + "\n"


def build_report(configs: list[BenchConfig], results_dir=None, out: Path | None = None,
                 zoo_md: Path | None = None, samplers: bool = True) -> str:
    """The text of zoo.md: its block between the zoo.py markers (the summary and one section per
    config) rebuilt, the samplers' block rebuilt by benchmarks/samplers.py's function, the rest kept."""
    zoo_md = zoo_md or RESULTS / "zoo.md"
    out = out or zoo_md.parent / GRIDS
    sections = []
    for config in configs:
        rows = list(read_rows(_results_folder(config, results_dir) / f"{config.name}.csv").values())
        sections.append((config, rows))
    lines = [
        BEGIN,
        "# The zoo on digits and MNIST: test NLL, active units and a sample grid per entry",
        "",
        ("Written by `python benchmarks/zoo.py report` from the tables that `genmod bench` writes for each "
        "`benchmarks/configs/zoo_*.toml` (its section below has the config's protocol, budget, commit and "
        "machine, and the full table); the grids (64 prior samples, decoded means E[x|z], seed 0) by "
        "`python benchmarks/zoo.py grids`. NLL in nats per test point, lower is better; IS: importance "
        "sampling with IS K draws from the trained guide; AIS only where a config scores it. Every row is a "
        "small-budget run on a shared 2-core CPU, not a converged result."),
        "",
        summary(sections, out, zoo_md),
    ]
    lines += [config_section(config, rows, out, zoo_md) for config, rows in sections]
    lines.append(END)
    text = zoo_md.read_text(encoding="utf-8") if zoo_md.is_file() else ""
    text = _replace_block(text, BEGIN, END, "\n".join(lines), at_start=True)
    module = _samplers_module() if samplers else None
    if module is not None:
        text = _replace_block(text, module.BEGIN, module.END, module.section(), at_start=False)
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("grids", "write a sample grid for every trained cell"),
                            ("report", "rebuild zoo.md from the configs' tables")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("configs", nargs="+", help="bench configs, e.g. benchmarks/configs/zoo_*.toml")
        p.add_argument("--runs-root", default=None, metavar="DIR",
                       help="each config's runs are in DIR/LAST, LAST the last folder of its runs_dir")
        p.add_argument("--out", default=None, metavar="DIR", help="the grids' folder (default: results/zoo)")
    grids, report = sub.choices["grids"], sub.choices["report"]
    grids.add_argument("--data-root", default=None, metavar="DIR", help="datasets' folder (default: $GENMOD_DATA_ROOT)")
    grids.add_argument("--seed", type=int, default=0)
    report.add_argument("--results-dir", default=None, metavar="DIR", action="append",
                        help="where the configs' NAME.csv are (default: each config's results_dir); repeat it "
                             "to fall back, e.g. to the committed benchmarks/results/zoo/tables, for a "
                             "config whose table the first folder lacks")
    report.add_argument("--collect", action="store_true",
                        help="first rebuild each config's table from its runs' result files")
    report.add_argument("--zoo-md", default=None, metavar="FILE", help="the page to write (default: results/zoo.md)")
    report.add_argument("--no-samplers", action="store_true", help="leave out the ex-post samplers' section")
    args = parser.parse_args(argv)
    try:
        configs = [runs_config(load_config(path), args.runs_root) for path in args.configs]
        if args.command == "grids":
            if args.data_root is not None:
                os.environ["GENMOD_DATA_ROOT"] = str(Path(args.data_root).expanduser().resolve())
            out = Path(args.out) if args.out else RESULTS / GRIDS
            print(f"{len(write_grids(configs, out, seed=args.seed))} grids written to {out}")
            return 0
        zoo_md = Path(args.zoo_md) if args.zoo_md else RESULTS / "zoo.md"
        if args.collect:
            for config in configs:
                collect(config, _results_folder(config, args.results_dir[0] if args.results_dir else None))
        out = Path(args.out).resolve() if args.out else zoo_md.resolve().parent / GRIDS
        text = build_report(configs, args.results_dir, out, zoo_md.resolve(), samplers=not args.no_samplers)
        atomic_write_text(zoo_md, text)
        print(f"wrote {zoo_md}")
        return 0
    except (GenmodError, ConfigError) as error:
        print(f"zoo.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""How many nats plain importance sampling misses on MNIST, measured with AIS and checked with BDMC.

For each trained run of ``benchmarks/configs/mnist_1k.toml`` (a bench cell folder: its trained
pair and its K = 5000 IS blocks ``eval-K5000-seed0-block500``), on the first ``--points`` test
images:

- IS with K = 5000 draws from q(z|x) (the bench's blocks are reused when they are there; same
  seeds and file format as the bench, so the numbers are the bench's);
- AIS from q(z|x) to p(z|x) with ``--steps`` intermediate distributions, ``--chains`` chains per
  point and ``--leapfrog`` leapfrog steps per HMC transition (``pg.log_likelihood(...,
  method="ais")``), in resumable blocks of ``--block`` points (the bench's AIS block layout);
- BDMC (``pg.ais.bdmc``) on ``--bdmc-points`` points simulated from the model with the same
  settings: forward AIS is a stochastic lower bound, reverse AIS from the generating z an upper
  bound, and their gap bounds the AIS error on data like the model's own.

``report`` writes ``benchmarks/results/ais.md`` from whatever blocks have finished.

    python -m benchmarks.ais run --runs RUNS --cell mnist__vae__mean_field__trace_elbo-k1__seed0 \\
        --data-root DATA --steps 1000 --chains 2 --leapfrog 2
    python -m benchmarks.ais report --runs RUNS --data-root DATA
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from pyro_genmod.ais import bdmc
from pyro_genmod.bench.args import output_file
from pyro_genmod.bench.provenance import commit_label, cpu_model
from pyro_genmod.bench.metrics import blockwise_log_likelihood
from pyro_genmod.folders import atomic_savez, atomic_write_text
from pyro_genmod.runs import load_run

__all__ = ["main", "run_cell", "summarize"]

RESULTS = Path(__file__).resolve().parent / "results"
IS_K, IS_SEED, IS_BLOCK = 5000, 0, 500  # the bench's evaluation of mnist_1k.toml
STEP_SIZE = 0.05


def _ais_folder(cell: Path, args) -> Path:
    """The bench's AIS block folder for these settings (``ais_columns``), so either can resume the other."""
    return cell / f"eval-ais-T{args.steps}-K{args.chains}-L{args.leapfrog}-eps{STEP_SIZE:g}-seed{IS_SEED}-block{args.block}"


def _bdmc_file(cell: Path, args) -> Path:
    return cell / f"bdmc-T{args.steps}-K{args.chains}-L{args.leapfrog}-n{args.bdmc_points}-seed{IS_SEED}.npz"


def run_cell(cell: Path, args) -> None:
    """AIS in blocks, BDMC, then IS (the bench's blocks when it has scored them), for one trained
    cell; every part is saved as it ends."""
    torch.set_num_threads(1)
    run = load_run(cell)
    model, guide = run.model.eval(), run.guide.eval()
    x = run.data.test[: args.points]
    order = [] if args.bdmc_only else list(enumerate(range(0, x.shape[0], args.block)))
    if args.blocks:  # these blocks only, in this order
        order = [order[int(i)] for i in args.blocks.split(",")]
    for i, start in reversed(order) if args.reverse else order:  # one block at a time: progress is visible
        stop = min(start + args.block, x.shape[0])
        began = time.perf_counter()
        blockwise_log_likelihood(
            model, guide, x, args.chains, seed=IS_SEED, block=args.block, khat_points=0,
            folder=_ais_folder(cell, args), method="ais", num_steps=args.steps, leapfrog_steps=args.leapfrog,
            step_size=STEP_SIZE, blocks=[i],
        )
        print(f"{cell.name}: AIS points {start}-{stop} ({time.perf_counter() - began:.0f} s)", flush=True)
    path = _bdmc_file(cell, args)
    if args.no_bdmc:
        return
    if args.bdmc_points and not path.exists():
        began = time.perf_counter()
        result = bdmc(model, guide, num_points=args.bdmc_points, num_chains=args.chains, num_steps=args.steps,
                      leapfrog_steps=args.leapfrog, step_size=STEP_SIZE, seed=IS_SEED)
        seconds = time.perf_counter() - began
        atomic_savez(path, {"lower": result.lower.numpy(), "upper": result.upper.numpy(), "seconds": np.array(seconds)},
                     what="BDMC result")
        print(f"{cell.name}: BDMC on {args.bdmc_points} simulated points ({seconds:.0f} s)", flush=True)
    if args.bdmc_only:
        return
    began = time.perf_counter()
    blockwise_log_likelihood(model, guide, x, IS_K, seed=IS_SEED, block=IS_BLOCK, khat_points=None,
                             folder=cell / f"eval-K{IS_K}-seed{IS_SEED}-block{IS_BLOCK}")
    print(f"{cell.name}: IS K={IS_K} ready ({time.perf_counter() - began:.0f} s)", flush=True)


def _blocks(folder: Path) -> dict[str, np.ndarray]:
    """The finished blocks of an evaluation folder, in point order, joined; ``index`` holds the
    test-set index of every point (blocks may have finished out of order)."""
    parts = []
    for path in sorted(folder.glob("points-*.npz")):
        start, stop = (int(v) for v in path.stem.split("-")[1:3])
        with np.load(path, allow_pickle=False) as saved:
            parts.append({**{key: saved[key] for key in saved.files}, "index": np.arange(start, stop)})
    if not parts:
        return {}
    joined = {key: np.concatenate([np.atleast_1d(p[key]) for p in parts]) for key in parts[0] if key != "seconds"}
    joined["seconds"] = np.array(sum(float(p["seconds"]) for p in parts))
    return joined


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")


def summarize(cell: Path, args) -> dict | None:
    """The row of ``ais.md`` for one cell, from its saved blocks (``None`` before any AIS block)."""
    ais = _blocks(_ais_folder(cell, args))
    is_ = _blocks(cell / f"eval-K{IS_K}-seed{IS_SEED}-block{IS_BLOCK}")
    if not ais or not is_:
        return None
    ais_per_1000 = float(ais["seconds"]) * 1000 / ais["index"].size
    both = np.isin(ais["index"], is_["index"])  # points scored by both
    ais = {key: value[both] if key != "seconds" else value for key, value in ais.items()}
    where = np.searchsorted(is_["index"], ais["index"])
    n = int(both.sum())
    if n == 0:
        return None
    is_ll, ais_ll, khat = is_["per_point"][where], ais["per_point"], is_["khat"][where]
    missed = ais_ll - is_ll  # nats of log p(x) that IS misses (AIS is itself a lower bound)
    bad = khat > 0.7
    row = {"cell": cell.name, "points": n, "is_seconds_per_1000": float(is_["seconds"]) * 1000 / is_["per_point"].size,
           "ais_seconds_per_1000": ais_per_1000, "acceptance": float(ais["acceptance"].mean()),
           "mc_stderr": float(ais["mc_stderr"].mean()), "khat_share": float(bad.mean()), "khat_bad": int(bad.sum())}
    row["is_nll"], row["is_nll_se"] = (-v if i == 0 else v for i, v in enumerate(_mean_se(is_ll)))
    row["ais_nll"], row["ais_nll_se"] = (-v if i == 0 else v for i, v in enumerate(_mean_se(ais_ll)))
    row["missed"], row["missed_se"] = _mean_se(missed)
    row["missed_bad"], row["missed_bad_se"] = _mean_se(missed[bad]) if bad.sum() > 1 else (float("nan"),) * 2
    row["missed_good"], row["missed_good_se"] = _mean_se(missed[~bad]) if (~bad).sum() > 1 else (float("nan"),) * 2
    path = _bdmc_file(cell, args)
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            gap = saved["upper"] - saved["lower"]
            row["bdmc_points"] = gap.size
            row["bdmc_gap"], row["bdmc_gap_se"] = _mean_se(gap)
            row["bdmc_lower"], row["bdmc_upper"] = float(-saved["lower"].mean()), float(-saved["upper"].mean())
            row["bdmc_seconds"] = float(saved["seconds"])
    training = json.loads((cell / "config.json").read_text())["training"]
    row["objective"], row["k"] = training["objective"], training["num_particles"]
    return row


def _f(value, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def report(args) -> Path:
    rows = [row for cell in sorted(Path(args.runs).iterdir()) if cell.is_dir() and (row := summarize(cell, args))]
    commit = commit_label()
    settings = f"T = {args.steps} steps, {args.chains} chains per point, {args.leapfrog} leapfrog steps"
    lines = [
        "# AIS against IS on MNIST: how many nats plain importance sampling misses",
        "",
        (f"Models: the runs of `benchmarks/configs/mnist_1k.toml` that finished (784-200-200-50 tanh VAE, "
        f"Bernoulli decoder, mean-field encoder, 20 epochs; retrained with that config for this page). IS: K = {IS_K} "
        f"draws from q(z|x) (the bench's evaluation). AIS: from q(z|x) to p(z|x) on the sigmoid geometric "
        f"path, {settings}, HMC step size adapted per point towards 65% acceptance. NLL in nats "
        f"per test image (lower is better); 'IS misses' = AIS log p(x) - IS log p(x) on the same images, "
        f"paired (AIS is itself a stochastic lower bound, so this understates what IS misses)."),
        "",
        ("| model | objective | k | test images | IS NLL | AIS NLL | IS misses (all) | k-hat > 0.7 "
         "| IS misses where k-hat > 0.7 | IS misses where k-hat <= 0.7 | AIS MC s.e. per point | acceptance "
         "| IS s / 1000 images | AIS s / 1000 images |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| vae | {r['objective']} | {r['k']} | {r['points']} | {_f(r['is_nll'])} ± {_f(r['is_nll_se'])} | "
            f"{_f(r['ais_nll'])} ± {_f(r['ais_nll_se'])} | {_f(r['missed'])} ± {_f(r['missed_se'])} | "
            f"{100 * r['khat_share']:.1f}% ({r['khat_bad']}) | {_f(r['missed_bad'])} ± {_f(r['missed_bad_se'])} | "
            f"{_f(r['missed_good'])} ± {_f(r['missed_good_se'])} | {_f(r['mc_stderr'])} | {_f(r['acceptance'])} | "
            f"{_f(r['is_seconds_per_1000'], 0)} | {_f(r['ais_seconds_per_1000'], 0)} |"
        )
    lines += ["", "## BDMC on data simulated from each model (same AIS settings)", "",
              ("| model | objective | k | simulated points | forward AIS NLL (upper bound on NLL) "
               "| reverse AIS NLL (lower bound) | gap (nats) | s |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "bdmc_gap" in r:
            lines.append(f"| vae | {r['objective']} | {r['k']} | {r['bdmc_points']} | {_f(r['bdmc_lower'])} | "
                         f"{_f(r['bdmc_upper'])} | {_f(r['bdmc_gap'])} ± {_f(r['bdmc_gap_se'])} | {_f(r['bdmc_seconds'], 0)} |")
    lines += [
        "",
        (f"Machine: {cpu_model()}, {os.cpu_count()} cores shared with other jobs (load average "
         f"{', '.join(f'{v:.0f}' for v in os.getloadavg())} when this page was written; one thread per process), "
         f"so wall times overstate the compute. Commit {commit}. Commands:"),
        "",
        "    genmod bench CONFIG   # a copy of benchmarks/configs/mnist_1k.toml with runs_dir outside the repo",
        (f"    python -m benchmarks.ais run --runs RUNS --cell CELL --data-root DATA --steps {args.steps} "
         f"--chains {args.chains} --leapfrog {args.leapfrog} --points {args.points} --bdmc-points {args.bdmc_points}"),
        "    python -m benchmarks.ais report --runs RUNS --data-root DATA  (same settings)",
        "",
    ]
    out = Path(args.out)
    atomic_write_text(out, "\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "report"))
    parser.add_argument("--runs", required=True, help="the bench's runs folder (cell folders inside)")
    parser.add_argument("--cell", help="run: the cell folder name under --runs")
    parser.add_argument("--data-root", default=None, help="MNIST root (default: $GENMOD_DATA_ROOT)")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--leapfrog", type=int, default=2)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--bdmc-points", type=int, default=100)
    parser.add_argument("--reverse", action="store_true",
                        help="run: AIS blocks from the last one (a second process sharing the work)")
    parser.add_argument("--no-bdmc", action="store_true", help="run: AIS blocks only")
    parser.add_argument("--blocks", default=None, help="run: only these AIS blocks, e.g. 5,4 (another process's share)")
    parser.add_argument("--bdmc-only", action="store_true", help="run: BDMC only (in a process of its own)")
    parser.add_argument("--out", type=output_file, default=str(RESULTS / "ais.md"))
    args = parser.parse_args(argv)
    if not Path(args.runs).is_dir():
        parser.error(f"--runs '{args.runs}' is not a folder; give the bench's runs folder (cell folders inside)")
    if args.data_root:
        os.environ["GENMOD_DATA_ROOT"] = args.data_root
    if args.action == "run":
        if not args.cell:
            parser.error("run needs --cell")
        run_cell(Path(args.runs) / args.cell, args)
    else:
        print(report(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

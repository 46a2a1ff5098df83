"""Data-parallel throughput: 1 process against 2 torch.distributed (gloo) processes, with threads.

Each configuration trains the same model for the same epochs with the same global batch
(one process at batch G, or two processes at batch G/2 each, launched by ``torchrun``) and
records training points per second, the thread count per process, and the machine's load.

    python -m benchmarks.distributed                       # MNIST, Burda's one-layer VAE
    python -m benchmarks.distributed --dataset digits      # no download needed

Writes ``benchmarks/results/distributed.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__: list[str] = []

RESULTS = Path(__file__).parent / "results"
MNIST_ROOT = os.environ.get("GENMOD_DATA_ROOT") or str(Path(__file__).resolve().parents[2] / "shared" / "data")  # ../shared/data
CONFIGS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process); 2 x 1 fills 2 cores


def worker(args) -> None:
    """One run of ``fit`` (a torchrun worker when ``--processes`` > 1); rank 0 prints JSON."""
    import pyro
    import torch

    import pyro_genmod as pg
    from pyro_genmod.distributed import init_distributed, is_main_process

    torch.set_num_threads(args.threads)
    distributed = args.processes > 1
    if distributed:
        init_distributed("gloo")
    options = {"root": MNIST_ROOT} if args.dataset == "mnist" else {}
    data = pg.load_dataset(args.dataset, **options)
    pyro.set_rng_seed(0)
    model = pg.create_model("vae", data, latent_dim=args.latent_dim, hidden=args.hidden)
    guide = pg.create_guide("mean_field", model, hidden=args.hidden)
    start = time.perf_counter()
    result = pg.fit(
        model, guide, data, epochs=args.epochs, batch_size=args.global_batch // args.processes,
        seed=0, progress=False, distributed=distributed,
    )
    seconds = time.perf_counter() - start
    if is_main_process():
        print(json.dumps({
            "processes": args.processes, "threads": args.threads, "seconds": seconds,
            "points_per_second": args.epochs * data.train.shape[0] / seconds,
            "final_train_elbo": result.history[-1]["train_elbo"], "final_val_elbo": result.history[-1]["val_elbo"],
        }))
    if distributed:
        torch.distributed.destroy_process_group()


def launch(args, processes: int, threads: int) -> dict:
    flags = [
        "--worker", "--processes", str(processes), "--threads", str(threads), "--dataset", args.dataset,
        "--epochs", str(args.epochs), "--global-batch", str(args.global_batch),
        "--latent-dim", str(args.latent_dim), "--hidden", *map(str, args.hidden),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        command = [sys.executable, "-m", "benchmarks.distributed", *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "benchmarks.distributed", *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args, rows: list[dict], load: tuple[list[float], list[float]]) -> str:
    import torch

    base = rows[0]["points_per_second"]
    lines = [
        "# Data-parallel throughput (torch.distributed, gloo, CPU)",
        "",
        f"`python -m benchmarks.distributed --dataset {args.dataset} --epochs {args.epochs}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: VAE {args.hidden}-{args.latent_dim} "
        f"with a mean-field guide, {args.epochs} epoch(s) of {args.dataset}, global batch "
        f"{args.global_batch} (per-process batch = global / processes), validation ELBO every epoch "
        f"included in the time. Each configuration ran {args.repeats} times, interleaved; the table shows "
        f"the fastest run, the last column every run. {os.cpu_count()} CPU cores, torch {torch.__version__}; load average "
        f"{load[0][0]:.1f} before and {load[1][0]:.1f} after (other jobs shared the machine).",
        "",
        "| processes | threads per process | per-process batch | seconds | training points / s | vs 1 x 1 | final train ELBO | all runs (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['processes']} | {row['threads']} | {args.global_batch // row['processes']} | "
            f"{row['seconds']:.1f} | {row['points_per_second']:.0f} | "
            f"{row['points_per_second'] / base:.2f}x | {row['final_train_elbo']:.2f} | "
            f"{', '.join(f'{s:.1f}' for s in row['all_seconds'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration, interleaved; the fastest is reported")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    before = list(os.getloadavg())
    runs = [[launch(args, p, t) for p, t in CONFIGS] for _ in range(args.repeats)]  # interleaved
    after = list(os.getloadavg())
    rows = [min(tries, key=lambda row: row["seconds"]) | {"all_seconds": [r["seconds"] for r in tries]}
            for tries in zip(*runs)]
    for row in rows:
        print(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps({"rows": rows, "load": [before, after]}, indent=2) + "\n")
    (RESULTS / "distributed.md").write_text(report(args, rows, (before, after)))


if __name__ == "__main__":
    main()

"""Scaling: DDP against the hand-written all-reduce it replaced, and the digits grid on the executors.

    python -m benchmarks.distributed                 # both parts; writes benchmarks/results/scale.md (+ .json)
    python -m benchmarks.distributed --part ddp      # only the DDP part (keeps the other part's last numbers)
    python -m benchmarks.distributed --part grid
    python -m benchmarks.distributed --results-dir DIR   # DIR/scale.md and DIR/scale.json instead

**DDP.** ``torchrun --standalone --nproc_per_node=2`` starts two gloo workers. Each builds the
same fit (VAE with a mean-field guide on ``digits``) once per variant and trains them in
interleaved blocks of steps (:func:`benchmarks.perf.interleaved`: every round runs every
variant, in rotated order, and the ratio is taken within the round):

- ``hand-written``: the step the library used before DistributedDataParallel, kept here only as
  the baseline (:func:`hand_written_step`): the loss, one flat all-reduce of every gradient
  after the backward pass, the optimizer step;
- ``ddp``: ``_Fit.step`` as the library runs it, through DistributedDataParallel (gradients
  bucketed and all-reduced while the backward pass runs);
- ``ddp + find_unused_parameters``: the same with DDP's search for unused parameters, which
  the library turns on for Pyro programs and the ``local`` guide;
- two other DDP settings, to show where DDP's time goes: DDP's default broadcast of the
  buffers before every forward (which the library skips where the buffers are constants, as
  here), and ``gradient_as_bucket_view=True``.

Every variant takes the same work per step (same model, batch size and data), and every step
is a collective, so the two ranks run in lockstep; rank 0 reports steps per second.

**Grid.** ``genmod bench`` on an 8-cell digits grid (``benchmarks/configs/digits_grid8.toml``),
in a fresh runs folder each time: sequentially (``--executor local --jobs 1``, the cells one after
another in one process), with 2 local worker processes, and on a Dask ``LocalCluster`` of 1 and
2 workers; the rounds are interleaved and each wall time is divided by the same round's
sequential one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__: list[str] = []

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GRID_CONFIG = HERE / "configs" / "digits_grid8.toml"
GRID_RUNS = (("sequential", "local", 1), ("local, 2 workers", "local", 2),
             ("dask, 1 worker", "dask", 1), ("dask, 2 workers", "dask", 2))


# ---------------------------------------------------------------- DDP against the hand-written all-reduce


def sum_gradients(ddp, params) -> None:
    """The hand-written all-reduce the library used before DDP (the baseline, kept only here):
    every parameter's gradient summed over the ranks in one flat all-reduce after the backward
    pass; a rank whose parameter had no gradient skipped its update (the drift DDP fixes)."""
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(ddp.device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
        if p.grad is not None:
            p.grad.copy_(chunk.view_as(p.grad))


def hand_written_step(run, epoch: int, step: int, index) -> float:
    """``_Fit.step`` as it was before DDP (on a fit built without DDP): the loss, its value summed
    over the ranks, the checks, backward, :func:`sum_gradients`, clipping, the optimizer step."""
    import torch

    ddp = run.ddp
    batch = ddp.shard(run.data.training_batch(run.train_x[index], run.generator))
    differentiable, value = run._loss(batch, (epoch - 1) * run.steps_per_epoch + step)
    value = ddp.sum(value)
    run._check_loss_blowup(epoch, step, value / max(1, index.shape[0]))
    run.optimizer.zero_grad(set_to_none=True)
    differentiable.backward()
    sum_gradients(ddp, run.optimizer.param_groups[0]["params"])
    if run.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.params, run.clip_grad_norm)
    run.optimizer.step()
    return value


def _endless(run):
    """``(epoch, step, index)`` for ever: the fit's minibatches, epoch after epoch."""
    epoch = 1
    while True:
        for step, index in run.batches():
            yield epoch, step, index
        run.order, run.skip, epoch = None, 0, epoch + 1


def ddp_worker(args) -> None:
    """One torchrun worker: one fit per variant, trained in interleaved blocks; rank 0 prints JSON."""
    import pyro
    import torch

    import pyro_genmod as pg
    from benchmarks.perf import interleaved
    from pyro_genmod import distributed, train
    from pyro_genmod.distributed import DataParallel, init_distributed

    torch.set_num_threads(1)
    ddp = init_distributed("gloo")
    data = pg.load_dataset("digits")

    original_wrap = DataParallel.wrap

    def make(variant: str):
        """The fit of one variant (every rank builds the same parameters from seed 0):
        ``hand-written`` without DDP; ``ddp`` as the library builds it for this pair (no search for
        unused parameters, buffers broadcast once); ``ddp + find_unused_parameters`` with the
        search forced on; ``ddp + buffers broadcast every step`` with DDP's default broadcast of
        the buffers before every forward; ``ddp + gradient_as_bucket_view`` with the gradients
        stored in DDP's buckets."""
        pyro.set_rng_seed(0)
        model = pg.create_model("vae", data, latent_dim=args.latent_dim, hidden=args.hidden)
        guide = pg.create_guide("mean_field", model, hidden=args.hidden)
        saved = distributed.parameter_use_may_vary, DataParallel.wrap
        if variant == "hand-written":
            DataParallel.wrap = lambda self, module: module
        elif variant == "ddp + find_unused_parameters":
            distributed.parameter_use_may_vary = lambda model, guide: True
        elif variant == "ddp + gradient_as_bucket_view":
            def wrap(self, module):
                module.scale = float(self.world_size)
                wrapped = torch.nn.parallel.DistributedDataParallel(module, gradient_as_bucket_view=True)
                wrapped.broadcast_buffers = False
                return wrapped
            DataParallel.wrap = wrap
        try:
            run = train._Fit(
                model, guide, data, epochs=10**6, batch_size=args.batch_size, lr=1e-3, seed=0,
                objective="trace_elbo", num_particles=1, early_stopping=None, device=None, checkpoint=None,
                distributed=True, beta=1.0, kl_warmup=0, free_bits=0.0, optimizer=None, optimizer_options=None,
                lr_schedule=None, lr_schedule_options=None, clip_grad_norm=None,
            )
        finally:
            distributed.parameter_use_may_vary, DataParallel.wrap = saved
        if variant == "ddp + buffers broadcast every step":
            run.objective.broadcast_buffers = True  # DDP's default
        elif variant != "hand-written":
            assert run.objective.broadcast_buffers is False and run.objective.find_unused_parameters is (
                variant == "ddp + find_unused_parameters")
        return run

    assert DataParallel.wrap is original_wrap
    variants = ("hand-written", "ddp", "ddp + find_unused_parameters", "ddp + buffers broadcast every step",
                "ddp + gradient_as_bucket_view")
    runs = {name: make(name) for name in variants}
    steps = {name: _endless(run) for name, run in runs.items()}

    def stepper(name):
        run, batches = runs[name], steps[name]
        if name == "hand-written":
            return lambda: hand_written_step(run, *next(batches))
        return lambda: run.step(*next(batches))

    fns = {name: stepper(name) for name in variants}
    for fn in fns.values():  # warm-up: the first steps (DDP's bucket rebuild, allocator) are not timed
        for _ in range(5):
            fn()
    result = interleaved(fns, rounds=args.rounds, block=args.block, baseline="hand-written")
    # the replicas stayed identical under every variant (every rank took the same updates)
    spread = {}
    for name, run in runs.items():
        flat = torch.cat([p.detach().reshape(-1) for p in run.params])
        gathered = [torch.empty_like(flat) for _ in range(ddp.world_size)]
        torch.distributed.all_gather(gathered, flat)
        spread[name] = max(float((g - flat).abs().max()) for g in gathered)
    plain = runs["ddp"]
    if ddp.is_main:
        params = sum(p.numel() for p in plain.params)
        print(json.dumps({"variants": result, "replica_max_abs_difference": spread, "parameters": params,
                          "world_size": ddp.world_size, "per_rank_batch": args.batch_size}))
    torch.distributed.destroy_process_group()


def bench_ddp(args) -> dict:
    flags = ["--ddp-worker", "--batch-size", str(args.batch_size), "--latent-dim", str(args.latent_dim),
             "--hidden", *map(str, args.hidden), "--rounds", str(args.rounds), "--block", str(args.block)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "benchmarks.distributed", *flags]
    before = os.getloadavg()
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          cwd=HERE.parent, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average"] = [before[0], os.getloadavg()[0]]
    result["options"] = {k: getattr(args, k) for k in ("batch_size", "latent_dim", "hidden", "rounds", "block")}
    return result


# ---------------------------------------------------------------- the digits grid on the executors


def bench_grid(args) -> dict:
    """Wall time of ``genmod bench`` on the 8-cell digits grid per executor, interleaved rounds."""
    import resource

    seconds: dict[str, list[float]] = {label: [] for label, _, _ in GRID_RUNS}
    cpu: dict[str, list[float]] = {label: [] for label, _, _ in GRID_RUNS}
    before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="genmod-scale-") as tmp:
        for r in range(args.grid_rounds):
            order = GRID_RUNS[r % len(GRID_RUNS):] + GRID_RUNS[: r % len(GRID_RUNS)]
            for label, executor, jobs in order:
                folder = Path(tmp) / f"{executor}{jobs}-{r}"
                folder.mkdir()
                config = folder / "grid.toml"
                config.write_text(
                    f'results_dir = "{(folder / "results").as_posix()}"\nruns_dir = "{(folder / "runs").as_posix()}"\n'
                    + GRID_CONFIG.read_text()
                )
                command = [sys.executable, "-m", "pyro_genmod", "bench", str(config), "--executor", executor,
                           "--jobs", str(jobs), "--quiet"]
                before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, check=False,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
                took = time.perf_counter() - start
                after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and the workers it waited for
                cpu[label].append(after_cpu.ru_utime + after_cpu.ru_stime - before_cpu.ru_utime - before_cpu.ru_stime)
                if done.returncode != 0 or "8 cells ok, 0 failed" not in done.stdout:
                    raise SystemExit(f"{label}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}")
                seconds[label].append(took)
                print(f"round {r + 1}: {label}: {took:.1f} s, CPU {cpu[label][-1]:.1f} s", flush=True)
    rows = {}
    for label, times in seconds.items():
        ratios = [t / s for t, s in zip(times, seconds["sequential"])]
        rows[label] = {"seconds": times, "median_s": statistics.median(times), "cpu_seconds": cpu[label],
                       "ratio_to_sequential": ratios, "median_ratio": statistics.median(ratios)}
    return {"rows": rows, "rounds": args.grid_rounds, "load_average": [before[0], os.getloadavg()[0]]}


# ---------------------------------------------------------------- the report


def _machine_line(info: dict) -> str:
    return (f"`{info['command']}` at commit `{info['commit']}`, {info['utc']} UTC; torch {info['torch']}, "
            f"pyro {info['pyro']}; {info['cpus']} CPU cores ({info['cpu']}).")


def report(result: dict) -> str:
    lines = [
        "# Scaling: DistributedDataParallel and the grid executors (issue 17)",
        "",
        ("Written by `python -m benchmarks.distributed`. The machine is a 2-core VM shared with other "
        "jobs (two long niced training runs in the background, and other developers' tests): no core "
        "was idle, so these are ratios measured on a loaded machine, not a scaling curve; the load "
        "averages are given with each part. Every process ran with one torch thread "
        "(`OMP_NUM_THREADS=1`)."),
        "",
    ]
    ddp = result.get("ddp")
    if ddp:
        v = ddp["variants"]
        opts = ddp["options"]
        lines += [
            "## DDP against the hand-written all-reduce it replaced (2 gloo processes)",
            "",
            _machine_line(ddp["machine"]),
            "",
            (f"VAE {opts['hidden']}-{opts['latent_dim']} with a mean-field guide on digits "
            f"({ddp['parameters']:,} parameters), per-rank batch {opts['batch_size']}, Adam, one torchrun launch "
            f"of 2 workers; {opts['rounds']} interleaved rounds of {opts['block']} steps per variant after 5 "
            f"warm-up steps each. Steps per second of the 2-process run (rank 0's clock; every step is a "
            f"collective, so the ranks run in lockstep); ratio = the variant's time per step over the "
            f"hand-written loop's in the same round, median over rounds (95% CI for the median). Load "
            f"average {ddp['load_average'][0]:.1f} before, {ddp['load_average'][1]:.1f} after."),
            "",
            "| variant | steps / s (wall) | time per step vs hand-written (wall) | 95% CI | CPU time vs hand-written | replicas' max abs difference |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in v.items():
            wall, cpu = row["wall"], row["cpu"]
            lines.append(
                f"| {name} | {1 / wall['median_s']:.1f} | {wall['ratio']:.3f}x | "
                f"{wall['ratio_ci95'][0]:.3f}-{wall['ratio_ci95'][1]:.3f} | {cpu['ratio']:.3f}x | "
                f"{ddp['replica_max_abs_difference'][name]:.1e} |"
            )
        lines.append("")
    grid = result.get("grid")
    if grid:
        lines += [
            "## The digits grid on the executors",
            "",
            _machine_line(grid["machine"]),
            "",
            (f"`genmod bench benchmarks/configs/digits_grid8.toml --executor E --jobs N --quiet` (8 cells: VAE "
            f"with a mean-field guide, trace_elbo and iwae:5, seeds 0-3), each time into a fresh runs folder; "
            f"{grid['rounds']} interleaved rounds; ratio = wall time over the same round's sequential run, "
            f"median over rounds. CPU seconds are those of the command and every process it started and "
            f"waited for (workers included). Every run finished with `8 cells ok, 0 failed`. Load average "
            f"{grid['load_average'][0]:.1f} before, {grid['load_average'][1]:.1f} after."),
            "",
            "| executor | wall seconds (each round) | vs sequential (median) | each round | CPU seconds (each round) |",
            "|---|---|---|---|---|",
        ]
        for label, row in grid["rows"].items():
            lines.append(
                f"| {label} | {', '.join(f'{s:.1f}' for s in row['seconds'])} | {row['median_ratio']:.2f}x | "
                f"{', '.join(f'{r:.2f}' for r in row['ratio_to_sequential'])} | "
                f"{', '.join(f'{c:.0f}' for c in row.get('cpu_seconds', []))} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from pyro_genmod.bench.args import results_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["ddp", "grid", "all"], default="all")
    parser.add_argument("--batch-size", type=int, default=64, help="per-rank batch of the DDP part")
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds of the DDP part")
    parser.add_argument("--block", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--grid-rounds", type=int, default=2, help="interleaved rounds of the grid part")
    parser.add_argument("--results-dir", type=results_folder, default=str(RESULTS), metavar="DIR",
                        help="where scale.json and scale.md go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    from benchmarks.perf import machine
    from pyro_genmod.folders import atomic_write_text

    path = args.results_dir / "scale.json"
    result = json.loads(path.read_text()) if path.exists() else {}  # the other part's last numbers stay
    argv = sys.argv[1:] if argv is None else argv
    command = {"command": " ".join(["python", "-m", "benchmarks.distributed", *argv])}
    if args.part in ("ddp", "all"):
        result["ddp"] = bench_ddp(args) | {"machine": machine() | command | {"torch_threads": 1}}
        print(json.dumps(result["ddp"], indent=2))
    if args.part in ("grid", "all"):
        result["grid"] = bench_grid(args) | {"machine": machine() | command | {"torch_threads": 1}}
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.results_dir / "scale.md", report(result))


if __name__ == "__main__":
    main()

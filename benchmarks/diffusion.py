"""Diffusion model against a VAE at the same CPU budget: test NLL (IS and ELBO) in nats and bits/dim.

For each dataset, trains ``diffusion`` (guide ``forward_process``, objective ``diffusion_elbo``)
for ``--budget`` seconds of training, then a VAE (Burda et al.'s 200-200 tanh networks,
``mean_field`` guide, ``trace_elbo``) for the same wall-clock training time, in chunks of
epochs resumed from the run folder's checkpoint. Both are scored on the same test points: the
importance-sampled log p(x) with K draws (the diffusion model's proposal is its forward process,
whole chains), its standard error and PSIS k-hat, and the ELBO; plus the single-draw ELBO on
the whole test set. Sample grids of both are written next to the table.

    OMP_NUM_THREADS=1 nice python benchmarks/diffusion.py run --dataset digits --runs ~/genmod-runs/diffusion
    OMP_NUM_THREADS=1 nice python benchmarks/diffusion.py run --dataset mnist --data-root DIR \\
        --runs ~/genmod-runs/diffusion --budget 900 --score-points 500
    python benchmarks/diffusion.py report --runs ~/genmod-runs/diffusion   # -> benchmarks/results/diffusion.md

MNIST is read from ``--data-root`` (or ``$GENMOD_DATA_ROOT``), torchvision's layout
(``MNIST/raw``), binarized dynamically as in Burda et al.'s protocol. Run folders (checkpoints,
``result.json``) go under ``--runs``, never into the repository; the sample grids (``run``) and
``diffusion.md`` (``report``) go to ``benchmarks/results``, or to ``--results-dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torchvision.utils

import pyro_genmod as pg
from pyro_genmod.bench.args import results_folder
from pyro_genmod.bench.provenance import commit_label, machine
from pyro_genmod.folders import atomic_write, atomic_write_text
from pyro_genmod.train import evaluate_elbo

__all__ = ["main", "score_pair", "train_for"]

RESULTS = Path(__file__).resolve().parent / "results"
LN2 = math.log(2.0)


def train_for(model, guide, data, folder: Path, budget: float, chunk: int, **options) -> dict:
    """Train in chunks of ``chunk`` epochs (each resumed from ``folder``'s checkpoint) until the
    CPU time spent training reaches ``budget`` seconds (CPU time, not wall time: the machine is
    shared, and CPU time is what each model is given); returns epochs, CPU and wall seconds.

    The time spent so far is kept in ``folder/budget.json`` beside the checkpoint, written after
    every chunk, so a rerun (after a kill, or to score again with another K) continues the same
    training, or only restores it when its budget is spent, and never starts it over."""
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / "budget.json"
    spent = json.loads(ledger.read_text()) if ledger.is_file() else {"epochs": 0, "train_seconds": 0.0,
                                                                      "train_wall_seconds": 0.0}
    epochs, cpu, wall = spent["epochs"], spent["train_seconds"], spent["train_wall_seconds"]
    if epochs == 0 and (folder / "checkpoint.safetensors").is_file():
        raise SystemExit(f"{folder} has a checkpoint but no budget.json: its training time is unknown; "
                         "write budget.json (epochs, train_seconds, train_wall_seconds) or use a new --runs folder")
    if cpu >= budget:  # spent: restore the trained pair from its checkpoint
        pg.fit(model, guide, data, epochs=epochs, checkpoint=folder, resume=True, progress=False, **options)
    while cpu < budget:
        start, start_wall = time.process_time(), time.perf_counter()
        pg.fit(model, guide, data, epochs=epochs + chunk, checkpoint=folder, resume=epochs > 0, progress=False,
               **options)
        epochs += chunk
        cpu, wall = cpu + time.process_time() - start, wall + time.perf_counter() - start_wall
        atomic_write_text(ledger, json.dumps({"epochs": epochs, "train_seconds": cpu, "train_wall_seconds": wall}))
    return {"epochs": epochs, "train_seconds": cpu, "train_wall_seconds": wall}


def score_pair(model, guide, data, points: int, num_samples: int, seed: int) -> dict:
    """IS log p(x) with its standard error, k-hat and ELBO on the first ``points`` test points,
    and the single-draw ELBO on all of them, in nats and bits per dimension."""
    dims = math.prod(data.shape)
    x = data.test[:points]
    start = time.process_time()
    ll = pg.log_likelihood(model, guide, x, num_samples, seed=seed)
    score_seconds = time.process_time() - start
    torch.manual_seed(seed)
    elbo_all = evaluate_elbo(model, guide, data.test, batch_size=500)
    return {
        "points": int(x.shape[0]), "num_samples": num_samples, "score_seconds": score_seconds,
        "nll": -ll.mean, "nll_stderr": ll.stderr, "elbo_nll": -ll.elbo_mean,
        "elbo_nll_stderr": float(ll.elbo.std() / math.sqrt(ll.elbo.numel())),
        "khat_mean": ll.khat_mean, "khat_above_0.7": ll.khat_above_07,
        "elbo_nll_all": -elbo_all, "all_points": int(data.test.shape[0]),
        "bpd": -ll.mean / (dims * LN2), "elbo_bpd": -ll.elbo_mean / (dims * LN2),
        "elbo_bpd_all": -elbo_all / (dims * LN2),
    }


def write_grid(model, path: Path, seed: int, count: int = 64) -> None:
    x = pg.sample(model, count, mean=True, seed=seed)
    grid = torchvision.utils.make_grid(x.clamp(0, 1), nrow=int(math.sqrt(count)), padding=1, pad_value=0.5)
    atomic_write(path, lambda tmp: torchvision.utils.save_image(grid, tmp, format="png"), what="image")


def run(args) -> None:
    torch.set_num_threads(args.threads)
    commit = commit_label()  # when the run starts
    root = Path(args.runs).expanduser() / args.dataset
    root.mkdir(parents=True, exist_ok=True)
    if args.dataset == "mnist":
        data = pg.load_dataset("mnist", root=args.data_root) if args.data_root else pg.load_dataset("mnist")
    else:
        data = pg.load_dataset("digits")
    if args.val_points and args.val_points < data.val.shape[0]:  # the per-epoch validation ELBO is not training
        data = pg.Dataset(name=data.name, train=data.train, val=data.val[: args.val_points], test=data.test,
                          binarization=data.binarization, options=dict(data.options))
    points = min(args.score_points or data.test.shape[0], data.test.shape[0])
    rows = {}
    torch.manual_seed(args.seed)
    model = pg.create_model("diffusion", data, num_steps=args.num_steps)
    guide = pg.create_guide("forward_process", model)
    budget = train_for(model, guide, data, root / "diffusion", args.budget, args.chunk, seed=args.seed,
                       batch_size=args.batch_size, lr=args.lr)
    rows["diffusion"] = {**budget, **score_pair(model, guide, data, points, args.num_samples, args.seed),
                         "options": {"num_steps": args.num_steps, "objective": "diffusion_elbo"}}
    write_grid(model, args.results_dir / f"diffusion_{args.dataset}_samples.png", args.seed)
    print(json.dumps(rows["diffusion"]), flush=True)

    if args.full_chain:  # the same model trained on the full-chain ELBO (trace_elbo), same budget
        torch.manual_seed(args.seed)
        chain = pg.create_model("diffusion", data, num_steps=args.num_steps)
        forward = pg.create_guide("forward_process", chain)
        budget = train_for(chain, forward, data, root / "diffusion_trace_elbo", rows["diffusion"]["train_seconds"],
                           args.chunk, seed=args.seed, batch_size=args.batch_size, lr=args.lr, objective="trace_elbo")
        rows["diffusion, full chain"] = {**budget, **score_pair(chain, forward, data, points, args.num_samples, args.seed),
                                         "options": {"num_steps": args.num_steps, "objective": "trace_elbo"}}
        print(json.dumps(rows["diffusion, full chain"]), flush=True)

    torch.manual_seed(args.seed)
    vae = pg.create_model("vae", data, latent_dim=args.latent_dim)
    encoder = pg.create_guide("mean_field", vae)
    budget = train_for(vae, encoder, data, root / "vae", rows["diffusion"]["train_seconds"], args.vae_chunk,
                       seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    rows["vae"] = {**budget, **score_pair(vae, encoder, data, points, args.num_samples, args.seed),
                   "options": {"latent_dim": args.latent_dim, "objective": "trace_elbo"}}
    write_grid(vae, args.results_dir / f"diffusion_{args.dataset}_vae_samples.png", args.seed)
    print(json.dumps(rows["vae"]), flush=True)

    meta = {
        "dataset": args.dataset, "shape": list(data.shape), "commit": commit, "threads": args.threads,
        "machine": machine(),
        "command": f"python benchmarks/diffusion.py run --dataset {args.dataset} --budget {args.budget} "
                   f"--num-steps {args.num_steps} -K {args.num_samples} --score-points {points}"
                   + (" --full-chain" if args.full_chain else ""),
    }
    atomic_write_text(root / "result.json", json.dumps({"meta": meta, "rows": rows}, indent=2))


def variance(args) -> None:
    """The diffusion_elbo estimator against the full-chain single-draw ELBO (trace_elbo's), per
    point and for a batch sum, on a model trained briefly on digits; writes variance.json."""
    from pyro_genmod.importance import log_importance_weights
    from pyro_genmod.objectives.diffusion_elbo import diffusion_terms, step_proposal

    torch.set_num_threads(args.threads)
    data, rows = pg.load_dataset("digits"), []
    x = data.test[: args.points]
    for steps in args.steps:
        for epochs in (0, args.epochs):
            torch.manual_seed(0)
            model = pg.create_model("diffusion", data, num_steps=steps, hidden=[128, 128])
            guide = pg.create_guide("forward_process", model)
            if epochs:
                pg.fit(model, guide, data, epochs=epochs, seed=0, progress=False)
            with torch.no_grad():
                torch.manual_seed(1)
                chain = log_importance_weights(model, guide, x, args.draws)
                one = -torch.stack([diffusion_terms(model, x)["total"] for _ in range(args.draws)])
                proposal = step_proposal(model)  # None (uniform) for the untrained model: no loss history yet
                weighted = -torch.stack([diffusion_terms(model, x, proposal)["total"] for _ in range(args.draws)])
            rows.append({
                "T": steps, "epochs": epochs, "points": int(x.shape[0]), "draws": args.draws,
                "chain_mean": float(chain.mean()), "one_step_mean": float(one.mean()),
                "stderr_of_difference": math.sqrt(float(chain.var(0).mean() + one.var(0).mean()) / (args.draws * x.shape[0])),
                "chain_var_point": float(chain.var(0).mean()), "one_step_var_point": float(one.var(0).mean()),
                "chain_var_batch": float(chain.sum(1).var()), "one_step_var_batch": float(one.sum(1).var()),
                "importance_mean": float(weighted.mean()), "importance_var_point": float(weighted.var(0).mean()),
                "importance_var_batch": float(weighted.sum(1).var()),
                "proposal": None if proposal is None else [round(float(p), 4) for p in proposal],
            })
            print(json.dumps(rows[-1]), flush=True)
    root = Path(args.runs).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    command = (f"python benchmarks/diffusion.py variance --steps {' '.join(map(str, args.steps))} --epochs {args.epochs} "
               f"--points {args.points} --draws {args.draws}")
    atomic_write_text(root / "variance.json", json.dumps({"command": command, "rows": rows}, indent=2))


def _variance_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    lines = [
        "## The diffusion_elbo estimator against the full chain (digits)",
        "",
        (f"`{result['command']}`: denoiser 128-128, the same draws count for both estimators; "
        "var(point) is the variance of one draw for one point (mean over points), var(batch) of the sum "
        "over the batch (diffusion_elbo stratifies t across the batch). Network passes per point: "
        "diffusion_elbo 2, full chain T. 'uniform': t drawn uniformly (`diffusion_elbo(t_sampling=uniform)`); "
        "'importance': t drawn from the proposal the training run left in the model (the default; "
        "uniform for an untrained model, which has no loss history)."),
        "",
        ("| T | epochs | full chain ELBO | uniform t | importance t | var(point) chain | var(point) uniform | "
        "var(point) importance | var(batch) chain | var(batch) uniform | var(batch) importance | proposal p(t), t = 2..T |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "importance_mean" not in r:
            continue
        lines.append(
            f"| {r['T']} | {r['epochs']} | {r['chain_mean']:.2f} | {r['one_step_mean']:.2f} | {r['importance_mean']:.2f} | "
            f"{r['chain_var_point']:.1f} | {r['one_step_var_point']:.1f} | {r['importance_var_point']:.1f} | "
            f"{r['chain_var_batch']:.0f} | {r['one_step_var_batch']:.0f} | {r['importance_var_batch']:.0f} | "
            f"{'uniform' if r['proposal'] is None else ', '.join(f'{p:.3f}' for p in r['proposal'])} |"
        )
    return [*lines, ""]


def _fmt(row: dict, key: str, digits: int = 2) -> str:
    value = row.get(key)
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def report(args) -> None:
    lines = [
        "# Diffusion model vs VAE at the same CPU budget",
        "",
        "Written by `benchmarks/diffusion.py` (`run` per dataset, then `report`). Each model trains for",
        "the same CPU time on one thread (`OMP_NUM_THREADS=1`, niced, on a 2-core machine shared with",
        "other jobs, so wall time is longer), then all are scored on the same test points. NLL = -log p(x) per point",
        "(lower is better); bits/dim = NLL / (D ln 2). IS: importance-sampled log p(x) with K draws",
        "(diffusion: whole forward chains as proposals); ELBO: the mean log weight of the same draws;",
        "ELBO (all): one draw per point on the whole test set. k-hat above 0.7 means the IS estimate is",
        "unreliable (it is then close to a lower bound, not to log p(x)).",
        "",
    ]
    for dataset in ("digits", "mnist"):
        path = Path(args.runs).expanduser() / dataset / "result.json"
        if not path.exists():
            lines += [f"## {dataset}", "", f"no result (no `{path.name}` under `{dataset}/`: not run, or not finished)", ""]
            continue
        result = json.loads(path.read_text())
        meta, rows = result["meta"], result["rows"]
        lines += [
            f"## {dataset} (shape {tuple(meta['shape'])}, D = {math.prod(meta['shape'])})",
            "",
            f"`{meta['command']}` at commit {meta['commit']}; {meta['machine']}, {meta['threads']} thread(s).",
            "",
            ("| model | epochs | train CPU s (wall) | IS NLL (nats) | s.e. | IS bits/dim | ELBO NLL | ELBO bits/dim | "
             "ELBO NLL, all test | mean k-hat | k-hat > 0.7 | points, K | IS CPU s |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            lines.append(
                f"| {name} {row['options']} | {row['epochs']} | {row['train_seconds']:.0f} ({row['train_wall_seconds']:.0f}) | "
                f"{_fmt(row, 'nll')} | "
                f"{_fmt(row, 'nll_stderr')} | {_fmt(row, 'bpd', 4)} | {_fmt(row, 'elbo_nll')} | {_fmt(row, 'elbo_bpd', 4)} | "
                f"{_fmt(row, 'elbo_nll_all')} ({row['all_points']}) | {_fmt(row, 'khat_mean')} | "
                f"{100 * row['khat_above_0.7']:.0f}% | {row['points']}, {row['num_samples']} | {row['score_seconds']:.0f} |"
            )
        lines += [
            "",
            (f"Samples (E[x | x_1] / E[x | z] of 64 draws): `diffusion_{dataset}_samples.png`, "
             f"`diffusion_{dataset}_vae_samples.png`."),
            "",
        ]
    lines += _variance_lines(Path(args.runs).expanduser() / "variance.json")
    lines += [Path(args.notes).read_text().rstrip() + "\n"] if args.notes else []
    atomic_write_text(args.results_dir / "diffusion.md", "\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score both models on one dataset")
    r.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    r.add_argument("--data-root", default=None, help="folder with MNIST/raw (default: $GENMOD_DATA_ROOT, else ./data)")
    r.add_argument("--runs", required=True, help="folder for the run folders and result.json (outside the repo)")
    r.add_argument("--budget", type=float, default=60.0, help="training CPU seconds per model")
    r.add_argument("--num-steps", type=int, default=10, help="T of the diffusion model")
    r.add_argument("--latent-dim", type=int, default=None, help="VAE latent size (default: 8 digits, 50 MNIST)")
    r.add_argument("-K", "--num-samples", type=int, default=1000)
    r.add_argument("--score-points", type=int, default=None, help="test points scored by IS (default: all)")
    r.add_argument("--chunk", type=int, default=None, help="epochs per training chunk (default: 5 digits, 1 MNIST)")
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--val-points", type=int, default=1000, help="validation points scored each epoch")
    r.add_argument("--full-chain", action="store_true", help="also train the diffusion model with trace_elbo")
    v = sub.add_parser("variance", help="diffusion_elbo against the full-chain ELBO: mean and variance")
    v.add_argument("--runs", required=True)
    v.add_argument("--steps", type=int, nargs="+", default=[4, 10])
    v.add_argument("--epochs", type=int, default=30)
    v.add_argument("--points", type=int, default=60)
    v.add_argument("--draws", type=int, default=200)
    v.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("report", help="write benchmarks/results/diffusion.md from the runs' result.json")
    p.add_argument("--runs", required=True)
    p.add_argument("--notes", default=None, help="a Markdown file appended to the report (the discussion)")
    for writer in (r, p):
        writer.add_argument("--results-dir", type=results_folder, default=str(RESULTS), metavar="DIR",
                            help="where the sample grids and diffusion.md go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.command == "run":
        small = args.dataset == "digits"
        args.latent_dim = args.latent_dim or (8 if small else 50)
        args.chunk = args.chunk or (5 if small else 1)
        args.vae_chunk = args.chunk * (2 if small else 1)
        run(args)
    elif args.command == "variance":
        variance(args)
    else:
        report(args)


if __name__ == "__main__":
    main()

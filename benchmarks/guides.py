"""Guide zoo benchmark: every variational family and objective on the same VAE.

For each row (guide, objective, K) a VAE is trained from the same initialisation seed with the
same budget in epochs, then scored on the test set: IS log-likelihood with K=1000 (and its
standard error over points), the ELBO, the gap between them, mean PSIS k-hat and the training
time. Two extra rows reuse the mean-field model: the ``prior`` as proposal (the IS baseline)
and the ``local`` guide refined per test point from the mean-field start (the amortization
gap). A second table measures the guide-gradient variance of the IWAE estimator against DReG
on the trained mean-field model.

Writes ``benchmarks/results/guides.md`` (``guides_mnist.md`` with ``--data-root``; ``--out NAME`` names
the file, ``--results-dir DIR`` puts it under DIR).

    python benchmarks/guides.py                                             # digits
    python benchmarks/guides.py --data-root ../shared/data --epochs 3 --test-points 500 --max-k 5
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pyro
import torch

import pyro_genmod as pg
from pyro_genmod.bench.args import results_folder
from pyro_genmod.folders import atomic_write_text
from pyro_genmod.guides.local import fit_local
from pyro_genmod.objectives import get_objective

__all__ = ["ROWS", "train_and_score", "gradient_variance", "main"]

RESULTS = Path(__file__).resolve().parent / "results"

# (guide, objective, particles K): one trained model each
ROWS = [
    ("mean_field", "trace_elbo", 1),
    ("mean_field", "tracemeanfield_elbo", 1),
    ("mean_field", "iwae", 5),
    ("mean_field", "iwae_dreg", 5),
    ("mean_field", "iwae", 50),
    ("mean_field", "iwae_dreg", 50),
    ("full_rank", "trace_elbo", 1),
    ("low_rank", "trace_elbo", 1),
    ("iaf", "trace_elbo", 1),
    ("iaf", "iwae_dreg", 5),
    ("planar", "trace_elbo", 1),
    ("radial", "trace_elbo", 1),
    ("sylvester", "trace_elbo", 1),
    ("spline", "trace_elbo", 1),
]


def score_row(model, guide, test, num_samples: int, seed: int) -> dict:
    ll = pg.log_likelihood(model, guide, test, num_samples, seed=seed)
    return {
        "log_likelihood": ll.mean, "stderr": ll.stderr, "elbo": ll.elbo_mean,
        "gap": ll.mean - ll.elbo_mean, "khat": ll.khat_mean,
    }


def train_and_score(data, test, guide_name: str, objective: str, particles: int, args) -> tuple[dict, tuple]:
    """Train one VAE with ``guide_name`` under ``objective``; score it on ``test``."""
    pyro.set_rng_seed(args.seed)
    model = pg.create_model("vae", data, latent_dim=args.latent_dim)
    guide = pg.create_guide(guide_name, model)
    result = pg.fit(
        model, guide, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, objective=objective, num_particles=particles, progress=False,
    )
    row = score_row(model, guide, test, args.num_samples, args.seed)
    row.update(guide=guide_name, objective=objective if particles == 1 else f"{objective} K={particles}",
               seconds=result.train_seconds, epochs=result.epochs_run)
    return row, (model, guide)


def gradient_variance(model, guide, x, particles: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per-coordinate statistics of the guide gradient over ``repeats`` draws on batch ``x``.

    Returns, for ``iwae`` and ``iwae_dreg``: the total variance (sum over coordinates) and the
    mean signal-to-noise ratio |E g| / sd(g) over coordinates (Rainforth et al., 2018).
    """
    out = {}
    for name in ("iwae", "iwae_dreg"):
        objective, grads = get_objective(name, particles), []
        for r in range(repeats):
            torch.manual_seed(r)
            for p in (*model.parameters(), *guide.parameters()):
                p.grad = None
            objective(model, guide, x)[0].backward()
            grads.append(torch.cat([p.grad.flatten() for p in guide.parameters()]))
        g = torch.stack(grads).double()
        sd = g.std(0)
        keep = sd > 0
        out[name] = {
            "variance": float(g.var(0).sum()),
            "snr": float((g.mean(0).abs()[keep] / sd[keep]).mean()),
        }
    return out


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw; digits if omitted")
    parser.add_argument("--epochs", type=int, default=None, help="default: 200 on digits, 5 on MNIST")
    parser.add_argument("--latent-dim", type=int, default=None, help="default: 8 on digits, 50 on MNIST")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", "-K", type=int, default=1000)
    parser.add_argument("--test-points", type=int, default=None, help="score the first N test points")
    parser.add_argument("--local-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=100, help="draws for the gradient variance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="guides to run (default: all rows)")
    parser.add_argument("--max-k", type=int, default=None, help="skip rows trained with more particles")
    parser.add_argument("--out", default=None, help="result file name (default: guides.md or guides_mnist.md)")
    parser.add_argument("--results-dir", type=results_folder, default=str(RESULTS), metavar="DIR",
                        help="where the table goes (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.out is not None and Path(args.out).name != args.out:
        parser.error(f"--out is a file name ('{Path(args.out).name}'); give its folder with --results-dir")
    mnist = args.data_root is not None
    data = pg.load_dataset("mnist", root=args.data_root) if mnist else pg.load_dataset("digits")
    args.epochs = args.epochs or (5 if mnist else 200)
    args.latent_dim = args.latent_dim or (50 if mnist else 8)
    test = data.test[: args.test_points] if args.test_points else data.test
    rows, baseline = [], None
    for guide_name, objective, particles in ROWS:
        if (args.only and guide_name not in args.only) or (args.max_k and particles > args.max_k):
            continue
        row, pair = train_and_score(data, test, guide_name, objective, particles, args)
        rows.append(row)
        print(f"{row['guide']:<11} {row['objective']:<22} IS {fmt(row['log_likelihood'])} ELBO {fmt(row['elbo'])} "
              f"k-hat {fmt(row['khat'])} {row['seconds']:.0f} s", flush=True)
        if (guide_name, objective) == ("mean_field", "trace_elbo"):
            baseline = pair
    variance = {}
    if baseline is not None:
        model, guide = baseline
        prior = score_row(model, pg.create_guide("prior", model), test, args.num_samples, args.seed)
        rows.append({**prior, "guide": "prior", "objective": "(mean_field's model)", "seconds": 0.0, "epochs": 0})
        start = time.perf_counter()
        local = fit_local(model, test, guide, steps=args.local_steps, lr=0.05, num_particles=8, seed=args.seed)
        row = score_row(model, local, test, args.num_samples, args.seed)
        rows.append({**row, "guide": "local", "objective": f"(mean_field start, {args.local_steps} steps)",
                     "seconds": time.perf_counter() - start, "epochs": 0})
        for particles in (5, 50):
            variance[particles] = gradient_variance(model, guide, test[:64], particles, args.repeats)
    write_table(rows, variance, data, test, args)


def write_table(rows: list[dict], variance: dict, data, test, args) -> None:
    name = args.out or ("guides_mnist.md" if args.data_root else "guides.md")
    lines = [
        f"# Guide zoo on {data.name}: VAE (latent {args.latent_dim}, MLP 200-200 tanh, Bernoulli)",
        "",
        f"Command: `python benchmarks/guides.py{' --data-root ' + args.data_root if args.data_root else ''}"
        f" --epochs {args.epochs}{' --test-points ' + str(args.test_points) if args.test_points else ''}"
        f"{' --only ' + ' '.join(args.only) if args.only else ''}{' --max-k ' + str(args.max_k) if args.max_k else ''}`. "
        f"Every row: {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, seed {args.seed}, "
        f"same initialisation; scored on {test.shape[0]} test points with K={args.num_samples} "
        f"importance samples (seed {args.seed}). Log-likelihoods in nats per point (higher is "
        f"better); ± is the standard error over test points. Gap = IS log-likelihood - ELBO. "
        f"Machine: 2 shared CPU cores.",
        "",
        "| guide | objective | IS log p(x) (K=%d) | ELBO | gap | mean k-hat | train s |" % args.num_samples,
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['guide']} | {r['objective']} | {fmt(r['log_likelihood'])} ± {fmt(r['stderr'])} | "
            f"{fmt(r['elbo'])} | {fmt(r['gap'])} | {fmt(r['khat'])} | {r['seconds']:.0f} |"
        )
    if variance:
        lines += [
            "",
            f"## Guide-gradient variance: IWAE vs DReG (mean-field model above, {args.repeats} draws, batch of {min(64, test.shape[0])} test points)",
            "",
            "Total variance = sum over guide parameters of the per-coordinate variance of the gradient; "
            "SNR = mean over coordinates of |mean| / sd.",
            "",
            "| K | IWAE total variance | DReG total variance | ratio | IWAE SNR | DReG SNR |",
            "|---|---|---|---|---|---|",
        ]
        for particles, v in variance.items():
            lines.append(
                f"| {particles} | {v['iwae']['variance']:.4g} | {v['iwae_dreg']['variance']:.4g} | "
                f"{v['iwae']['variance'] / v['iwae_dreg']['variance']:.1f}x | {v['iwae']['snr']:.3f} | "
                f"{v['iwae_dreg']['snr']:.3f} |"
            )
    out = args.results_dir / name
    atomic_write_text(out, "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

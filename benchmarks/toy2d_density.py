"""Fit a small model to each toy 2-D density and save its learned density beside the data.

Usage: ``python -m benchmarks.toy2d_density [--model vae] [--epochs 60] [--out benchmarks/results]``
writes ``toy2d_<dataset>_<model>.png`` and prints the test log-likelihood of each fit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402

import pyro_genmod as pg  # noqa: E402
from pyro_genmod.bench.args import results_folder  # noqa: E402
from pyro_genmod.folders import atomic_write  # noqa: E402
from pyro_genmod.plots import plot_learned_density  # noqa: E402

__all__ = ["main"]

DATASETS = ("two_moons", "pinwheel", "rings", "eight_gaussians")
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vae")
    parser.add_argument("--guide", default="mean_field")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-samples", "-K", type=int, default=200, help="IS samples per grid point")
    parser.add_argument("--out", type=results_folder, default=str(RESULTS), help="folder for the figures (default: benchmarks/results)")
    args = parser.parse_args(argv)
    out = args.out
    for name in DATASETS:
        data = pg.load_dataset(name, num_train=args.num_train)
        pyro.set_rng_seed(0)
        model = pg.create_model(args.model, data, latent_dim=2, hidden=[64, 64], likelihood="gaussian")
        guide = pg.create_guide(args.guide, model, hidden=[64, 64])
        result = pg.fit(model, guide, data, epochs=args.epochs, batch_size=128, lr=3e-3, progress=False)
        ll = pg.log_likelihood(model, guide, data.test, args.num_samples, seed=0, khat=False)
        path = out / f"toy2d_{name}_{args.model}.png"
        fig = plot_learned_density(model, guide, data.train, num_samples=args.num_samples, resolution=100)
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100), what="figure")
        plt.close(fig)
        print(
            f"{name}: {args.model} + {args.guide}, {result.epochs_run} epochs in {result.train_seconds:.0f} s, "
            f"test log p(x) {ll.mean:.3f} +/- {ll.stderr:.3f} (IS K={args.num_samples}) -> {path}"
        )


if __name__ == "__main__":
    main()

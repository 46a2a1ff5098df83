"""Semi-supervised M2: test accuracy of q(y|x) against the number of labelled training images.

On MNIST the protocol uses 100, 600, 1000 and 3000 labels of 50,000 (Pyro's SS-VAE tutorial:
0.9319, 0.9437, 0.9487, 0.9582). On digits (1,297 training images) the same shares give
2.6, 15.6, 25.9 and 77.8 labels; with equal labels per class this rounds up to 10, 20, 30 and 80.

    python benchmarks/m2_labels.py                         # digits
    python benchmarks/m2_labels.py --data-root ../shared/data --epochs 20   # MNIST

Writes ``benchmarks/results/m2_labels.md`` (``m2_labels_mnist.md`` on MNIST; ``--results-dir DIR``
writes it under DIR instead).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pyro
from sklearn.linear_model import LogisticRegression

import pyro_genmod as pg
from pyro_genmod.bench.args import results_folder
from pyro_genmod.folders import atomic_write_text
from pyro_genmod.models.m2 import hide_labels

__all__ = ["main", "proportional_labels"]

RESULTS = Path(__file__).resolve().parent / "results"
MNIST_LABELS = (100, 600, 1000, 3000)
MNIST_TRAIN = 50000
TUTORIAL = dict(zip(MNIST_LABELS, (0.9319, 0.9437, 0.9487, 0.9582)))


def proportional_labels(num_train: int, num_classes: int = 10) -> list[int]:
    """MNIST's label counts scaled to ``num_train`` images, rounded up to equal labels per class."""
    return [num_classes * max(1, math.ceil(n * num_train / MNIST_TRAIN / num_classes)) for n in MNIST_LABELS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with MNIST/raw; default: digits")
    parser.add_argument("--epochs", type=int, default=None, help="default: 60 on digits, 20 on MNIST")
    parser.add_argument("--latent-dim", type=int, default=None, help="default: 8 on digits, 50 on MNIST")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="default: 128 on digits, 500 on MNIST")
    parser.add_argument("--alpha", type=float, default=50.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--results-dir", type=results_folder, default=str(RESULTS), metavar="DIR",
                        help="where the table goes (default: benchmarks/results)")
    args = parser.parse_args(argv)
    mnist = args.data_root is not None
    data = pg.load_dataset("mnist", root=args.data_root) if mnist else pg.load_dataset("digits")
    epochs = args.epochs or (20 if mnist else 60)
    latent_dim = args.latent_dim or (50 if mnist else 8)
    hidden = tuple(args.hidden or ((500,) if mnist else (128,)))
    counts = list(MNIST_LABELS) if mnist else proportional_labels(data.train.shape[0])
    rows = []
    for count, mnist_count in zip(counts, MNIST_LABELS):
        accuracies, seconds, baselines = [], [], []
        for seed in args.seeds:
            labelled = hide_labels(data, count, seed=seed)
            pyro.set_rng_seed(seed)
            model = pg.create_model("m2", labelled, latent_dim=latent_dim, hidden=hidden, alpha=args.alpha)
            guide = pg.create_guide("m2", model, hidden=hidden)
            start = time.perf_counter()
            pg.fit(model, guide, labelled, epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                   objective="traceenum_elbo", progress=False)
            seconds.append(time.perf_counter() - start)
            accuracies.append(model.accuracy(data.test, data.test_labels))
            known = labelled.train_labels >= 0  # the same labels, used alone
            baseline = LogisticRegression(max_iter=2000).fit(
                data.train[known].reshape(int(known.sum()), -1).numpy(), labelled.train_labels[known].numpy()
            )
            baselines.append(float(baseline.score(data.test.reshape(data.test.shape[0], -1).numpy(), data.test_labels.numpy())))
            print(f"{count} labels, seed {seed}: accuracy {accuracies[-1]:.4f} ({seconds[-1]:.0f} s)", flush=True)
        mean = sum(accuracies) / len(accuracies)
        spread = (sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5 if len(accuracies) > 1 else None
        rows.append((count, mnist_count, mean, spread, accuracies, sum(seconds) / len(seconds), sum(baselines) / len(baselines)))
    name = "m2_labels_mnist" if mnist else "m2_labels"
    lines = [
        f"# M2 accuracy against labels on {data.name}",
        "",
        f"Command: `python benchmarks/m2_labels.py{' --data-root ' + args.data_root if mnist else ''} "
        f"--epochs {epochs}`: latent dim {latent_dim}, hidden {list(hidden)} (softplus), alpha "
        f"{args.alpha}, Adam lr {args.lr}, batch {args.batch_size}, TraceEnum_ELBO (y summed out), "
        f"{data.train.shape[0]} training images, {data.test.shape[0]} test images, seeds {args.seeds}; CPU.",
        "",
        "| labels | MNIST equivalent | M2 test accuracy, mean | std over seeds | per seed | logistic regression on the labelled images alone | train s per run | Pyro tutorial on MNIST |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, mnist_count, mean, spread, accuracies, secs, base in rows:
        per_seed = ", ".join(f"{a:.3f}" for a in accuracies)
        lines.append(
            f"| {count} | {mnist_count} | {mean:.4f} | {'n/a (one seed)' if spread is None else f'{spread:.4f}'} | {per_seed} | {base:.4f} | {secs:.0f} "
            f"| {TUTORIAL[mnist_count]} |"
        )
    lines += ["", "Chance is 0.1. The tutorial numbers are on MNIST with far longer training; on digits they are context, not a target."]
    atomic_write_text(args.results_dir / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

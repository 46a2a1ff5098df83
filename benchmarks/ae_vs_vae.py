"""AE vs VAE: is the plain autoencoder's latent space incomplete and discontinuous, as the seed says?

Trains ``ae`` (delta guide, flat prior, no KL) and ``vae`` (mean-field guide) with the same
encoder and decoder networks, then measures:

* completeness: the share of decoded random codes that a logistic-regression digit classifier,
  trained on real images, labels with confidence above 0.9 (codes from N(0, I), the VAE's
  prior, and from a Gaussian fitted to the training codes), and the share that lie as near
  to real images as held-out real images do;
* continuity: for pairs of test images, decode a straight line between their codes in ``steps``
  steps, and compare the mean pixel change per step with the change between the endpoints.

Writes ``benchmarks/results/ae_vs_vae.{md,png}`` (``ae_vs_vae_mnist.*`` with ``--data-root``; ``--out STEM``
writes ``STEM.md`` and ``STEM.png``).

    python benchmarks/ae_vs_vae.py                                  # digits, minutes on 2 cores
    python benchmarks/ae_vs_vae.py --data-root ../shared/data --epochs 10   # MNIST
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import pyro_genmod as pg  # noqa: E402
from pyro_genmod.bench.args import output_file  # noqa: E402
from pyro_genmod.folders import atomic_write, atomic_write_text  # noqa: E402
from pyro_genmod.tasks import encode  # noqa: E402

__all__ = ["completeness", "continuity", "main"]

RESULTS = Path(__file__).resolve().parent / "results"


def completeness(classifier, images: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of ``images`` that ``classifier`` labels with probability above ``threshold``."""
    probs = classifier.predict_proba(images.reshape(images.shape[0], -1).numpy())
    return float((probs.max(axis=1) > threshold).mean())


def nearest_distance(images: torch.Tensor, reference: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Euclidean distance from each image to its nearest image in ``reference``."""
    flat, ref = images.reshape(images.shape[0], -1), reference.reshape(reference.shape[0], -1)
    return torch.cat([torch.cdist(flat[i : i + chunk], ref).min(1).values for i in range(0, flat.shape[0], chunk)])


def decode_mean(model, z: torch.Tensor) -> torch.Tensor:
    """E[x | z] for each code (pixel probabilities for a Bernoulli likelihood)."""
    with torch.no_grad():
        return model.likelihood({"z": z}).mean


def interpolate(model, z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoded means along z0 -> z1 in ``steps`` equal steps, shape ``(P, steps + 1, *shape)``."""
    t = torch.linspace(0, 1, steps + 1).reshape(1, -1, 1)
    path = (1 - t) * z0.unsqueeze(1) + t * z1.unsqueeze(1)
    return decode_mean(model, path)


def continuity(paths: torch.Tensor) -> dict[str, float]:
    """Pixel changes along interpolation paths of shape ``(P, T + 1, ...)``.

    ``step``: mean absolute pixel change between consecutive images; ``endpoints``: between the
    two ends; ``evenness``: mean over paths of (largest step / (endpoint change / T)), 1 for a
    perfectly even morph and T for a single jump; ``path_ratio``: total path length / endpoint
    change, 1 when the images morph straight from one end to the other.
    """
    flat = paths.reshape(paths.shape[0], paths.shape[1], -1)
    steps = (flat[:, 1:] - flat[:, :-1]).abs().mean(-1)  # (P, T)
    ends = (flat[:, -1] - flat[:, 0]).abs().mean(-1)  # (P,)
    num_steps = steps.shape[1]
    return {
        "step": float(steps.mean()),
        "endpoints": float(ends.mean()),
        "evenness": float((steps.max(1).values / (ends / num_steps)).mean()),
        "path_ratio": float((steps.sum(1) / ends).mean()),
    }


def train_pair(name: str, guide: str, data, latent_dim: int, args) -> tuple:
    pyro.set_rng_seed(args.seed)
    model = pg.create_model(name, data, latent_dim=latent_dim, hidden=args.hidden)
    q = pg.create_guide(guide, model, hidden=args.hidden)
    result = pg.fit(model, q, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=False)
    return model, q, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with MNIST/raw; default: digits")
    parser.add_argument("--epochs", type=int, default=None, help="default: 300 on digits, 10 on MNIST")
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=1000, help="random codes decoded per model")
    parser.add_argument("--pairs", type=int, default=200, help="test pairs interpolated")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--score-points", type=int, default=None, help="test points scored by IS (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=output_file, default=None, help="output stem (default benchmarks/results/ae_vs_vae[_mnist])")
    args = parser.parse_args(argv)
    mnist = args.data_root is not None
    stem = args.out or RESULTS / ("ae_vs_vae_mnist" if mnist else "ae_vs_vae")
    data = pg.load_dataset("mnist", root=args.data_root) if mnist else pg.load_dataset("digits")
    args.epochs = args.epochs or (10 if mnist else 300)

    # The judge: logistic regression on real training intensities; 20% held out as a reference.
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(data.train.shape[0], generator=generator)
    cut = int(0.8 * len(order))
    fit_rows, ref_rows = order[:cut], order[cut:]
    x_train = data.train.reshape(data.train.shape[0], -1)
    classifier = LogisticRegression(max_iter=2000, C=1.0)
    classifier.fit(x_train[fit_rows].numpy(), data.train_labels[fit_rows].numpy())
    reference_accuracy = float(classifier.score(x_train[ref_rows].numpy(), data.train_labels[ref_rows].numpy()))
    reference = completeness(classifier, data.train[ref_rows])
    # A second judge that a confident linear classifier cannot fool: how close a decoded image is
    # to real data, against the 95th percentile of that distance for held-out real images.
    threshold = float(torch.quantile(nearest_distance(data.train[ref_rows], data.train[fit_rows]), 0.95))

    torch.manual_seed(args.seed)
    pairs = torch.randint(data.test.shape[0], (args.pairs, 2), generator=generator)
    rows, figures = [], {}
    for latent_dim in args.latent_dims:
        for name, guide in (("ae", "delta"), ("vae", "mean_field")):
            start = time.perf_counter()
            model, q, result = train_pair(name, guide, data, latent_dim, args)
            seconds = time.perf_counter() - start
            codes = encode(q, data.train)
            sources = {
                "N(0, I)": torch.randn(args.samples, latent_dim, generator=generator),
                "Gaussian fitted to codes": codes.mean(0) + codes.std(0) * torch.randn(args.samples, latent_dim, generator=generator),
            }
            z0, z1 = encode(q, data.test[pairs[:, 0]]), encode(q, data.test[pairs[:, 1]])
            paths = interpolate(model, z0, z1, args.steps)
            smooth = continuity(paths)
            if name == "vae":
                ll = pg.log_likelihood(model, q, data.test[: args.score_points], 1000, seed=args.seed)
                score = f"{ll.mean:.2f} +/- {ll.stderr:.2f}"
            else:
                score = "n/a (improper prior)"
            for source, z in sources.items():
                images = decode_mean(model, z)
                rows.append({
                    "model": name, "dim": latent_dim, "codes": source, "complete": completeness(classifier, images),
                    "near": float((nearest_distance(images, data.train[fit_rows]) <= threshold).float().mean()),
                    "val": result.history[-1]["val_elbo"], "ll": score, "seconds": seconds, **smooth,
                })
                figures[(latent_dim, name, source)] = images[:12]
            figures[(latent_dim, name, "paths")] = paths[:4]

    write_figure(stem.with_name(stem.name + ".png"), figures, args)
    write_table(stem.with_name(stem.name + ".md"), rows, data, args, reference, reference_accuracy)
    print(stem.with_name(stem.name + ".md").read_text())


def strip(images: torch.Tensor) -> torch.Tensor:
    """Images ``(n, 1, H, W)`` side by side with a 1-pixel grey gap."""
    padded = torch.nn.functional.pad(images[:, 0], (0, 1), value=0.5)
    return torch.cat(list(padded), dim=1)


def write_figure(path: Path, figures: dict, args) -> None:
    dims = args.latent_dims
    fig, axes = plt.subplots(5, len(dims), figsize=(6 * len(dims), 9), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1, 1, 3.5, 3.5]})
    for col, dim in enumerate(dims):
        panels = [("ae", "N(0, I)"), ("ae", "Gaussian fitted to codes"), ("vae", "N(0, I)")]
        for row, (name, source) in enumerate(panels):
            axes[row, col].imshow(strip(figures[(dim, name, source)]).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_title(f"{name.upper()} (d={dim}): decoded random codes, {source}", fontsize=8)
        for row, name in ((3, "ae"), (4, "vae")):
            paths = figures[(dim, name, "paths")]
            grid = torch.cat([torch.nn.functional.pad(strip(p), (0, 0, 0, 1), value=0.5) for p in paths], dim=0)
            axes[row, col].imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_title(f"{name.upper()} (d={dim}): interpolations between two test images' codes", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), what="figure")
    plt.close(fig)


def write_table(path: Path, rows: list[dict], data, args, reference: float, accuracy: float) -> None:
    root = f" --data-root {args.data_root}" if args.data_root else ""
    lines = [
        f"# AE vs VAE on {data.name}",
        "",
        f"Command: `python benchmarks/ae_vs_vae.py{root} --epochs {args.epochs}"
        f"{f' --score-points {args.score_points}' if args.score_points else ''}`: latent dims "
        f"{args.latent_dims}, the same networks {args.hidden} (tanh) for the encoders and decoders "
        f"of both, Bernoulli likelihood, dynamic binarization, batch {args.batch_size}, Adam lr "
        f"{args.lr}, seed {args.seed}; CPU. IS scores on "
        f"{args.score_points or data.test.shape[0]} test points.",
        "",
        f"Judge: logistic regression on real training images. On held-out real images its "
        f"accuracy is {accuracy:.3f}, and {reference:.3f} of them get confidence > 0.9 (the "
        f"completeness of real data).",
        "",
        "| model | latent dim | random codes from | completeness (conf > 0.9) | near real data | mean step | endpoint change "
        "| largest step / even step | path length / endpoint change | val ELBO (AE: reconstruction) "
        "| test log p(x), IS K=1000 | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['dim']} | {r['codes']} | {r['complete']:.3f} | {r['near']:.3f} | {r['step']:.4f} "
            f"| {r['endpoints']:.4f} "
            f"| {r['evenness']:.2f} | {r['path_ratio']:.2f} | {r['val']:.2f} | {r['ll']} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "Near real data: the share of decoded images whose distance to the nearest real training "
        "image is at most the 95th percentile of that distance for held-out real images (0.95 "
        "for real data). Off-manifold images that a linear classifier happens to label "
        "confidently fail it, but blurry averages of digits (E[x|z] images are means) pass it.",
        "",
        f"{args.samples} random codes per row. The continuity columns come from {args.pairs} random "
        f"test pairs and {args.steps} steps (the same pairs for every model) and do not depend on "
        f"where random codes come from. An even morph has largest step / even step = 1 and path "
        f"length / endpoint change = 1; a single jump gives {args.steps} and 1.",
        "",
        f"Figure: `{path.with_suffix('.png').name}`.",
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

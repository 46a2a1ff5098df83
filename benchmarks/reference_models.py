"""Reference models with exact log p(x): the IS scorer and the SVI trainer against closed forms.

For each (model, dataset, guide) the pair is trained by SVI, then on the test set:

* exact LL: the trained model's exact log p(x), mean per point;
* IS LL (K): the importance-sampled estimate with the guide as proposal (a Delta guide is
  scored with the prior, as ``genmod`` does), its standard error over points, and IS - exact;
* mean and max PSIS k-hat;
* SVI LL against the reference: PPCA's closed-form ML solution (Tipping & Bishop), or
  scikit-learn's EM (FactorAnalysis, GaussianMixture with full covariances), as the
  difference per data dimension;
* train seconds.

Writes ``benchmarks/results/reference_models.{md,csv}`` (``--out STEM``: ``STEM.md`` and ``STEM.csv``).

    python benchmarks/reference_models.py            # K = 5000, a few minutes on 2 cores
    python benchmarks/reference_models.py --quick    # K = 100, short training: a smoke run
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from sklearn.decomposition import FactorAnalysis
from sklearn.mixture import GaussianMixture

import pyro_genmod as pg
from pyro_genmod.bench.args import output_file
from pyro_genmod.bench.provenance import cpu_model
from pyro_genmod.experiment import score
from pyro_genmod.folders import atomic_write_text
from pyro_genmod.tasks import sampled_dataset

__all__ = ["Problem", "problems", "run_rows", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
LINEAR_GUIDES = ("exact_posterior", "mean_field", "full_rank", "delta")
MIXTURE_GUIDES = ("exact_posterior", "categorical")
# EM run to convergence: scikit-learn's default tolerances stop it early (on iris, GaussianMixture
# stops after 24 iterations 0.0014 nats per point below its optimum).
EM_OPTIONS = dict(tol=1e-8, max_iter=10_000, random_state=0)


@dataclass
class Problem:
    """A model on a dataset, with its SVI budget and its closed-form or EM reference."""

    model: str
    data: pg.Dataset
    options: dict
    guides: tuple[str, ...]
    epochs: int
    lr: float
    batch_size: int
    fit_options: dict = field(default_factory=dict)


def linear_truth(name: str, dim: int, latent_dim: int, noise: float | None, seed: int):
    torch.manual_seed(seed)
    truth = pg.create_model(name, (dim,), latent_dim=latent_dim, init_scale=1.0)
    with torch.no_grad():
        truth.loc.normal_()
        if noise is None:
            truth.log_noise_scale.uniform_(-1.5, 0.0)
        else:
            truth.log_noise_scale.fill_(math.log(noise))
    return truth


def mixture_truth(dim: int, components: int, seed: int):
    torch.manual_seed(seed)
    truth = pg.create_model("gmm", (dim,), num_components=components, init_scale=3.0)
    with torch.no_grad():
        truth.raw_scale_tril.normal_(0, 0.3)
    return truth


def problems(quick: bool) -> list[Problem]:
    scale = 0.25 if quick else 1.0
    sizes = dict(num_train=2000, num_val=500, num_test=1000)

    def epochs(n: int) -> int:
        return max(2, int(n * scale))

    cancer, iris = pg.load_dataset("breast_cancer"), pg.load_dataset("iris")
    return [
        Problem("ppca", sampled_dataset(linear_truth("ppca", 10, 3, None, 0), **sizes, seed=1),
                {"latent_dim": 3}, LINEAR_GUIDES, epochs(40), 0.03, 500),
        Problem("ppca", cancer, {"latent_dim": 5}, LINEAR_GUIDES, epochs(150), 0.05, 400),
        Problem("ppca", sampled_dataset(linear_truth("ppca", 25, 20, 0.6, 3), **sizes, seed=1),
                {"latent_dim": 20}, ("exact_posterior", "mean_field"), epochs(150), 0.03, 500),
        Problem("factor_analysis",
                sampled_dataset(linear_truth("factor_analysis", 10, 3, None, 0), **sizes, seed=1),
                {"latent_dim": 3}, LINEAR_GUIDES, epochs(40), 0.03, 500),
        Problem("factor_analysis", cancer, {"latent_dim": 5}, LINEAR_GUIDES, epochs(600), 0.05, 400),
        Problem("gmm", sampled_dataset(mixture_truth(4, 3, 0), **sizes, seed=1), {"num_components": 3},
                MIXTURE_GUIDES, epochs(50), 0.05, 500, {"objective": "traceenum_elbo"}),
        Problem("gmm", iris, {"num_components": 3}, MIXTURE_GUIDES, epochs(300), 0.05, 105,
                {"objective": "traceenum_elbo"}),
    ]


def reference(problem: Problem) -> tuple[str, float, float]:
    """The closed-form (PPCA) or EM (scikit-learn) solution's name, and its held-out and
    training log p(x), means per point."""
    train, test = problem.data.train, problem.data.test
    if problem.model == "ppca":
        model = pg.create_model("ppca", problem.data, **problem.options).fit_closed_form(train)
        with torch.no_grad():
            return ("closed form", float(model.exact_log_likelihood(test).mean()),
                    float(model.exact_log_likelihood(train).mean()))
    if problem.model == "factor_analysis":
        em = FactorAnalysis(problem.options["latent_dim"], **EM_OPTIONS).fit(train.numpy())
        return "EM (sklearn FactorAnalysis)", float(em.score(test.numpy())), float(em.score(train.numpy()))
    em = GaussianMixture(problem.options["num_components"], covariance_type="full", **EM_OPTIONS)
    em.fit(train.numpy())
    return "EM (sklearn GaussianMixture)", float(em.score(test.numpy())), float(em.score(train.numpy()))


def run_rows(problem: Problem, guide_name: str, num_samples: int, seed: int = 0) -> list[dict]:
    """Train the pair by SVI (Adam at lr, then half the epochs at lr/10) and score it with the
    guide as proposal; a model trained with ``exact_posterior`` is also scored with the prior
    as proposal (the importance-sampling baseline), which gives a second row."""
    pyro.set_rng_seed(seed)
    model = pg.create_model(problem.model, problem.data, **problem.options)
    if problem.model == "gmm":
        model.init_from_data(problem.data.train, seed=seed)
    linear = guide_name in ("mean_field", "full_rank", "delta")
    guide = pg.create_guide(guide_name, model, **({"hidden": ()} if linear else {}))
    common = dict(batch_size=problem.batch_size, progress=False, **problem.fit_options)
    first = pg.fit(model, guide, problem.data, epochs=problem.epochs, lr=problem.lr, seed=seed,
                   **common)
    second = pg.fit(model, guide, problem.data, epochs=max(1, problem.epochs // 2),
                    lr=problem.lr / 10, seed=seed + 1, **common)
    with torch.no_grad():
        exact = float(model.exact_log_likelihood(problem.data.test).mean())
        exact_train = float(model.exact_log_likelihood(problem.data.train).mean())
    trained = {
        "model": problem.model,
        "dataset": problem.data.name,
        "guide": guide_name,
        "objective": problem.fit_options.get("objective", "trace_elbo"),
        "options": " ".join(f"{k}={v}" for k, v in problem.options.items()),
        "dims": math.prod(problem.data.shape),
        "K": num_samples,
        "exact_ll": exact,
        "train_exact_ll": exact_train,
        "epochs": first.epochs_run + second.epochs_run,
        "train_seconds": first.train_seconds + second.train_seconds,
    }
    proposals = [guide]
    if guide_name == "exact_posterior":
        proposals.append(pg.create_guide("prior", model))
    rows = []
    for proposal in proposals:
        ll, proposal_name = score(model, proposal, problem.data.test, num_samples, seed=seed)
        rows.append({
            **trained,
            "proposal": proposal_name,
            "is_ll": ll.mean,
            "is_stderr": ll.stderr,
            "is_minus_exact": ll.mean - exact,
            "elbo": ll.elbo_mean,
            "khat_mean": ll.khat_mean,
            "khat_max": ll.khat_max,
        })
    return rows


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(rows: list[dict], args, seconds: float) -> str:
    lines = [
        "# Reference models: exact log p(x) against the IS scorer and the SVI trainer",
        "",
        f"Command: `python benchmarks/reference_models.py{' --quick' if args.quick else ''}` "
        f"(K = {args.num_samples}); {cpu_model()} CPU, torch "
        f"{torch.__version__}, pyro {pyro.__version__}; total {seconds:.0f} s.",
        "",
        "All log-likelihoods are held-out (test set) means per point, in nats; *exact LL* is the "
        "SVI-trained model's closed-form log p(x), and SE is the standard error over test points. "
        "*IS - exact* is the scorer's error against the closed form. *reference LL* is the "
        "closed-form maximum-likelihood PPCA (Tipping & Bishop) or scikit-learn's EM fit on the "
        "same training set. *SVI - ref / dim* is exact LL minus reference LL per data dimension "
        "(the tests require |.| < 0.01 for PPCA and < 0.02 for FA on synthetic data, and the "
        "mixture within 1%). The training-set column shows which solution climbed higher on the "
        "data both were fit to. Guides mean_field, full_rank and delta use a linear encoder "
        "(`hidden=()`), which contains the exact posterior of a linear-Gaussian model; the "
        "categorical guide is an MLP (64 tanh units). Training: Adam at lr, then half the epochs "
        "at lr/10; the mixture starts from the same k-means clustering as scikit-learn's EM and "
        "enumerates k (TraceEnum_ELBO); EM runs to convergence (tol 1e-8). "
        "A delta guide is not a density, so its rows are scored with the prior as proposal; "
        "each exact_posterior-trained model is also scored with the prior as proposal, the "
        "importance-sampling baseline (guide column `exact_posterior (prior)`).",
        "",
        "| model | dataset | guide (proposal) | exact LL | IS LL (K) ± SE | IS - exact | ELBO "
        "| k-hat mean / max | reference LL | SVI - ref / dim | training-set LL: SVI / ref | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        guide = r["guide"] if r["proposal"] == r["guide"] else f"{r['guide']} ({r['proposal']})"
        lines.append(
            f"| {r['model']} ({r['options']}) | {r['dataset']} (D={r['dims']}) | {guide} "
            f"| {r['exact_ll']:.3f} | {r['is_ll']:.3f} ± {r['is_stderr']:.3f} | {r['is_minus_exact']:.2e} "
            f"| {r['elbo']:.3f} | {_fmt(r['khat_mean'], 2)} / {_fmt(r['khat_max'], 2)} "
            f"| {r['reference_ll']:.3f} ({r['reference']}) "
            f"| {r['svi_minus_reference_per_dim']:+.4f} "
            f"| {r['train_exact_ll']:.3f} / {r['train_reference_ll']:.3f} | {r['train_seconds']:.1f} |"
        )
    lines += [
        "",
        "k-hat is NaN (n/a) for a point whose weights leave PSIS no tail to fit: constant up to "
        "round-off (the exact posterior), or only C distinct values (the prior over a mixture's "
        "C components, or a near-certain categorical q); mean and max skip those.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=None, help="K (default 5000; 100 with --quick)")
    parser.add_argument("--quick", action="store_true", help="short training and K=100: a smoke run")
    parser.add_argument("--out", type=output_file, default=str(RESULTS / "reference_models"),
                        help="output path without suffix")
    args = parser.parse_args(argv)
    out = args.out
    args.num_samples = args.num_samples or (100 if args.quick else 5000)
    start = time.perf_counter()
    rows = []
    for problem in problems(args.quick):
        kind, value, train_value = reference(problem)
        for guide_name in problem.guides:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Pyro: the prior's k is not enumerated
                new = run_rows(problem, guide_name, args.num_samples)
            for row in new:
                row.update(reference=kind, reference_ll=value, train_reference_ll=train_value,
                           svi_minus_reference_per_dim=(row["exact_ll"] - value) / row["dims"])
                rows.append(row)
                print(
                    f"{row['model']:>15} {row['dataset']:>24} {guide_name:>15} {row['proposal']:>15}  "
                    f"exact {row['exact_ll']:9.3f}  IS {row['is_ll']:9.3f} ± {row['is_stderr']:.3f}  "
                    f"k-hat {_fmt(row['khat_mean'], 2):>6}  ref {value:9.3f}  "
                    f"Δ/dim {row['svi_minus_reference_per_dim']:+.4f}  {row['train_seconds']:.1f}s",
                    flush=True,
                )
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = (out.with_name(out.name + suffix) for suffix in (".csv", ".md"))  # a dot in STEM stays
    atomic_write_text(csv_path, table.getvalue())
    atomic_write_text(md_path, markdown(rows, args, time.perf_counter() - start))
    print(f"wrote {md_path} and {csv_path}")


if __name__ == "__main__":
    main()

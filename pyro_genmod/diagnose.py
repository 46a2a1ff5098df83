"""Posterior diagnostics of a trained pair: the guide q(z|x) against a NUTS reference of p(z|x)."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from torch import Tensor

from . import arviz_bridge
from .checks import check_positive_int
from .errors import ConfigError
from .importance import score
from .latents import check_pair
from .programs import as_guide, as_model
from .tasks import encode

__all__ = ["diagnose", "Diagnosis", "check_continuous", "reference_posterior"]

RHAT_LIMIT = 1.01
MIN_DRAWS = 4  # split R-hat (pyro.ops.stats.split_gelman_rubin) needs two halves of >= 2 draws per chain
ESS_PER_CHAIN = 100  # Vehtari et al. (2021) ask for ESS > 100 per chain before trusting R-hat


def check_continuous(model, what: str) -> None:
    """Raise :class:`ConfigError` if ``model`` has a discrete latent site (NUTS needs gradients)."""
    discrete = [site.describe() for site in model.latent_sites if site.discrete]
    if discrete:
        name = getattr(model, "registry_name", type(model).__name__)
        raise ConfigError(
            f"{what} needs continuous latent sites, but model '{name}' has {', '.join(discrete)}; "
            f"it works on runs whose latents are all continuous"
        )


def latent_layout(sites) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """ArviZ dims and coords for latent sites: ``(point, latent)`` for a single vector site,
    ``(point, <site>_dim_<i>...)`` otherwise. A dimension never takes the name of a variable
    (ArviZ keeps both in one namespace): a site called ``latent``, as in Pyro's VAE tutorial,
    gets the dimension ``latent_``."""
    taken = {site.name for site in sites} | {"x", "point"}

    def free(name: str) -> str:
        while name in taken:
            name += "_"
        return name

    single = len(sites) == 1 and len(sites[0].event_shape) == 1
    dims, coords = {}, {}
    for site in sites:
        names = [free("latent")] if single else [free(f"{site.name}_dim_{i}") for i in range(len(site.event_shape))]
        dims[site.name] = ["point", *names]
        coords.update({n: list(range(size)) for n, size in zip(names, site.event_shape)})
    return dims, coords


def reference_posterior(
    model, x: Tensor, *, num_chains: int = 4, num_warmup: int = 500, num_draws: int = 500,
    seed: int = 0, progress: bool = False,
) -> list[MCMC]:
    """NUTS draws of p(z|x) for every point of ``x`` with the model's networks held fixed.

    The points' posteriors are independent, so one NUTS run samples them jointly (with a
    diagonal mass matrix adapted per coordinate). Chains run one after another, each from its
    own seed and its own random start, so results do not depend on the number of CPUs.

    References:
        | The No-U-Turn Sampler (Hoffman & Gelman, 2014) https://arxiv.org/abs/1111.4246
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    runs = []
    try:
        for p in frozen:  # the potential's gradient is needed for z only
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            for chain in range(num_chains):
                pyro.set_rng_seed(seed + chain)
                kernel = NUTS(model, jit_compile=False)
                run = MCMC(kernel, num_samples=num_draws, warmup_steps=num_warmup, disable_progbar=not progress)
                run.run(x)
                runs.append(run)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return runs


def _flatten(draws: dict[str, np.ndarray], sites, points: int) -> np.ndarray:
    """Site draws ``(..., N, *event)`` → one array ``(S, N, D)`` over all flattened coordinates."""
    parts = [np.asarray(draws[s.name]).reshape(-1, points, s.size) for s in sites]
    return np.concatenate(parts, axis=-1)


def _coordinate_labels(sites) -> list[str]:
    return [f"{s.name}[{j}]" for s in sites for j in range(s.size)]


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    Attributes:
        reference: ``InferenceData`` of the NUTS draws (posterior, divergences, observed x).
        guide: ``InferenceData`` of the guide's draws.
        summary: ``az.summary`` of the reference (pandas).
        table: one row per (point, latent coordinate): reference and guide mean and SD, their
            errors, Monte Carlo SE, ESS bulk and tail, R-hat, 1-Wasserstein distance.
        points: one row per point: PSIS k-hat and its reading, log p(x), ELBO, estimated
            KL(q || p(z|x)) = log p(x) - ELBO, mean errors and distances.
        warnings: convergence warnings (R-hat, ESS, divergences).
        files: written files by kind, when ``out`` was given.
    """

    reference: object
    guide: object
    summary: object
    table: object
    points: object
    warnings: list[str]
    settings: dict
    files: dict[str, Path] = field(default_factory=dict)

    def report(self, max_rows: int = 10) -> str:
        """A markdown report: settings, warnings, the per-point table, the worst coordinates."""
        s = self.settings
        lines = [
            f"# Posterior diagnostics: {s['model']} + {s['guide']}",
            "",
            f"{s['points']} points; NUTS reference: {s['num_chains']} chains x {s['num_draws']} draws "
            f"({s['num_warmup']} warm-up), {s['seconds']:.0f} s; guide: {s['num_guide_samples']} draws; "
            f"k-hat and log p(x) from K={s['num_importance']} importance samples (proposal: {s['proposal']}).",
            "",
        ]
        converged = "- NUTS converged: R-hat <= 1.01 and ESS >= 100 per chain everywhere."
        lines += [f"- WARNING: {w}" for w in self.warnings] or [converged]
        lines += [
            "", "## Per point", "", _markdown(self.points), "",
            "khat: PSIS k-hat of the point's importance weights; kl_q_p = log p(x) - ELBO, an estimate "
            "of KL(q || p(z|x)); errors are guide minus NUTS, averaged over latent coordinates; w1: "
            "1-Wasserstein distance between the guide's and NUTS's marginals.",
            "",
        ]
        worst = self.table.reindex(
            self.table["mean_error"].abs().div(self.table["ref_sd"]).sort_values(ascending=False).index
        ).head(max_rows)
        lines += [
            f"## Coordinates with the largest mean error (in reference SDs), top {len(worst)}",
            "",
            _markdown(worst),
            "",
        ]
        return "\n".join(lines)


def _markdown(frame) -> str:
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _reconstructions(model, guide_draws: dict[str, np.ndarray], count: int) -> Tensor:
    """E[x | z] (or a draw of x) for the first ``count`` guide draws, shape ``(count, N, *shape)``."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    latents = {k: torch.as_tensor(v[:count]).to(device) for k, v in guide_draws.items()}
    with torch.no_grad():
        if getattr(model, "is_program", False):
            return model.decode(latents).cpu()
        likelihood = model.likelihood(latents)
        try:
            return likelihood.mean.cpu()
        except NotImplementedError:
            return likelihood.sample().cpu()


def _plot_reconstructions(x: Tensor, recon: Tensor, points, path: Path) -> Path:
    import matplotlib.pyplot as plt

    count, n = recon.shape[0], x.shape[0]
    image = x.dim() == 4 and x.shape[1] in (1, 3)
    if image:
        fig, axes = plt.subplots(n, count + 1, figsize=(1.1 * (count + 1), 1.1 * n), squeeze=False)
        for i in range(n):
            for j, img in enumerate([x[i], *recon[:, i]]):
                ax = axes[i, j]
                ax.imshow(img.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title("x" if j == 0 else f"q draw {j}", fontsize=7)
            axes[i, 0].set_ylabel(str(points[i]), fontsize=7)
    else:
        cols = min(4, n)
        fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.2 * cols, 2.4 * -(-n // cols)), squeeze=False)
        for i, ax in enumerate(axes.flat[:n]):
            ax.plot(x[i].reshape(-1).numpy(), color="k", linewidth=1.5, label="x")
            for j in range(count):
                label = "E[x|z], z~q" if j == 0 else None
                ax.plot(recon[j, i].reshape(-1).numpy(), color="C1", alpha=0.5, linewidth=0.8, label=label)
            ax.set_title(f"point {points[i]}", fontsize=9)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("data and reconstructions from guide draws", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def diagnose(
    model,
    guide,
    x_points: Tensor,
    *,
    points=None,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_draws: int = 500,
    num_guide_samples: int = 1000,
    num_importance: int = 5000,
    pair: tuple[int, int] | None = None,
    num_reconstructions: int = 6,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = False,
) -> Diagnosis:
    """Compare a guide's q(z|x) with NUTS draws of the true posterior p(z|x) on a few points.

    With the trained networks held fixed, NUTS samples p(z|x) for each point (the reference),
    and the guide is sampled at the same points. Both become ArviZ ``InferenceData`` with dims
    ``(point, latent)``. The report gives ``az.summary`` of the reference (ESS bulk and tail,
    R-hat; warnings when R-hat > 1.01 or ESS < 100 per chain), per-coordinate errors of the
    guide's mean and SD, the 1-Wasserstein distance of each marginal, an estimate of
    KL(q || p(z|x)) = log p(x) - ELBO, and each point's PSIS k-hat with its reading.

    References:
        | The No-U-Turn Sampler (Hoffman & Gelman, 2014) https://arxiv.org/abs/1111.4246
        | Rank-normalization, folding, and localization: an improved R-hat (Vehtari et al., 2021)
          https://arxiv.org/abs/1903.08008
        | Pareto Smoothed Importance Sampling (Vehtari et al., 2024) https://arxiv.org/abs/1507.02646

    Arguments:
        model, guide: a trained pair; every latent site must be continuous.
        x_points: the points, shape ``(N, *model.data_shape)`` (a few: NUTS is slow).
        points: labels of the points (for example their test-set indices); default ``0..N-1``.
        num_chains: NUTS chains (at least 4 gives a useful R-hat).
        num_warmup, num_draws: NUTS warm-up and kept draws per chain.
        num_guide_samples: draws from the guide.
        num_importance: K for each point's importance-sampled log p(x) and k-hat.
        pair: the two latent coordinates of the pair plot; default the two with the smallest
            reference SD (the most informative ones).
        num_reconstructions: guide draws decoded per point in the reconstruction plot.
        seed: seeds NUTS, the guide draws and the importance samples.
        out: a folder to write ``reference.nc``, ``guide.nc``, CSV tables, ``report.md`` and
            the PNG plots into.
        progress: show NUTS progress bars.
    """
    for name, value in (
        ("num_chains", num_chains), ("num_warmup", num_warmup), ("num_draws", num_draws),
        ("num_guide_samples", num_guide_samples), ("num_importance", num_importance),
    ):
        check_positive_int(name, value)
    if num_draws < MIN_DRAWS:
        raise ConfigError(
            f"num_draws (--draws) must be at least {MIN_DRAWS}, got {num_draws}: split R-hat and ESS cut "
            f"each chain's draws in two halves of at least 2 draws each (use several hundred for a reliable reference)"
        )
    model = as_model(model, x_points)
    guide = as_guide(guide, model, x_points)
    check_continuous(model, "diagnose")
    check_pair(model, guide)
    model.validate_data(x_points)
    sites = list(model.latent_sites)
    n = x_points.shape[0]
    points = list(range(n)) if points is None else [int(p) for p in points]
    if len(points) != n:
        raise ConfigError(f"got {len(points)} point labels for {n} points; pass one label per point")
    dims, coords = latent_layout(sites)
    coords["point"] = points

    t0 = time.perf_counter()
    runs = reference_posterior(
        model, x_points, num_chains=num_chains, num_warmup=num_warmup, num_draws=num_draws, seed=seed, progress=progress
    )
    seconds = time.perf_counter() - t0
    data_dims = {"x": ["point"]}
    reference = arviz_bridge.mcmc_inference_data(runs, coords, {**dims, **data_dims})

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flat_guide = encode(guide, x_points, num_samples=num_guide_samples).cpu().numpy()
    guide_draws, start = {}, 0
    for s in sites:
        guide_draws[s.name] = flat_guide[..., start : start + s.size].reshape(num_guide_samples, n, *s.event_shape)
        start += s.size
    ll, proposal = score(model, guide, x_points, num_importance, seed=seed)
    guide_idata = arviz_bridge.samples_inference_data(
        {k: v[None] for k, v in guide_draws.items()},
        coords,
        dims,
        observed_data={"x": x_points.cpu().numpy()},
    )

    summary, arrays = arviz_bridge.posterior_summary(reference, var_names=[s.name for s in sites])
    ref_flat = _flatten({k: v.values for k, v in reference.posterior.data_vars.items()}, sites, n)
    table, per_point = _compare(ref_flat, flat_guide, arrays, sites, points)
    density = not getattr(guide, "is_point_estimate", False)
    khat = np.asarray(ll.khat, dtype=np.float64)
    per_point.insert(1, "khat", khat)
    per_point.insert(2, "reading", [arviz_bridge.khat_reading(k) for k in khat])
    per_point.insert(3, "log_px", ll.per_point.numpy().astype(np.float64))
    per_point.insert(4, "elbo", ll.elbo.numpy().astype(np.float64) if density else np.nan)
    per_point.insert(5, "kl_q_p", (ll.per_point - ll.elbo).numpy().astype(np.float64) if density else np.nan)

    found = _convergence_warnings(table, num_chains, runs)
    for message in found:
        warnings.warn(f"diagnose: {message}", RuntimeWarning, stacklevel=2)
    settings = {
        "model": getattr(model, "registry_name", type(model).__name__),
        "guide": getattr(guide, "registry_name", type(guide).__name__),
        "points": n, "num_chains": num_chains, "num_warmup": num_warmup, "num_draws": num_draws,
        "num_guide_samples": num_guide_samples, "num_importance": num_importance, "proposal": proposal,
        "seed": seed, "seconds": seconds,
    }
    result = Diagnosis(reference, guide_idata, summary, table, per_point, found, settings)
    if out is not None:
        ref_sd = table["ref_sd"].to_numpy().reshape(n, -1)
        result.files = _write(
            result, Path(out), model, guide_draws, x_points, sites, dims, pair, ref_sd, num_reconstructions
        )
    return result


def _compare(ref: np.ndarray, guide: np.ndarray, arrays, sites, points: list[int]):
    """Per-coordinate and per-point tables of guide draws ``(S, N, D)`` against NUTS draws."""
    import pandas as pd
    from scipy.stats import wasserstein_distance

    n, labels = len(points), _coordinate_labels(sites)

    def metric(name: str) -> np.ndarray:
        return np.concatenate([arrays[s.name].sel(metric=name).values.reshape(n, s.size) for s in sites], axis=-1)

    w1 = np.array([[wasserstein_distance(ref[:, i, d], guide[:, i, d]) for d in range(len(labels))] for i in range(n)])
    ref_mean, ref_sd = ref.mean(0), ref.std(0, ddof=1)
    q_mean, q_sd = guide.mean(0), guide.std(0, ddof=1)
    ess_bulk, ess_tail, rhat = metric("ess_bulk"), metric("ess_tail"), metric("r_hat")
    columns = {
        "ref_mean": ref_mean, "ref_sd": ref_sd, "guide_mean": q_mean, "guide_sd": q_sd,
        "mean_error": q_mean - ref_mean, "sd_error": q_sd - ref_sd, "mcse_mean": metric("mcse_mean"),
        "mcse_sd": metric("mcse_sd"), "ess_bulk": ess_bulk, "ess_tail": ess_tail, "r_hat": rhat, "w1": w1,
    }
    table = pd.DataFrame(
        {"point": np.repeat(points, len(labels)), "latent": labels * n, **{k: v.ravel() for k, v in columns.items()}}
    )
    per_point = pd.DataFrame(
        {
            "point": points,
            "mean_abs_mean_error": np.abs(q_mean - ref_mean).mean(-1),
            "mean_abs_sd_error": np.abs(q_sd - ref_sd).mean(-1),
            "mean_w1": w1.mean(-1),
            "max_r_hat": rhat.max(-1),
            "min_ess_bulk": ess_bulk.min(-1),
            "min_ess_tail": ess_tail.min(-1),
        }
    )
    return table, per_point


def _convergence_warnings(table, num_chains: int, runs) -> list[str]:
    found = []
    rhat = table["r_hat"].to_numpy()
    if num_chains < 2:
        found.append("R-hat needs at least 2 chains (4 recommended); it was not checked")
    elif (bad := np.flatnonzero(~(rhat <= RHAT_LIMIT))).size:
        worst = int(bad[np.argmax(np.nan_to_num(rhat[bad], nan=np.inf))])
        found.append(
            f"R-hat > {RHAT_LIMIT} for {bad.size} of {rhat.size} coordinates (worst {rhat[worst]:.3f} at "
            f"point {table['point'].iloc[worst]}, {table['latent'].iloc[worst]}); run longer chains (--draws, --warmup)"
        )
    low = ESS_PER_CHAIN * num_chains
    for name in ("bulk", "tail"):
        ess = table[f"ess_{name}"].to_numpy()
        few = np.flatnonzero(~(ess >= low))
        if few.size:
            found.append(
                f"ESS {name} < {low} for {few.size} of {ess.size} coordinates (lowest "
                f"{np.nanmin(ess):.0f}); run longer chains"
            )
    divergent = sum(len(v) for run in runs for v in run.diagnostics()["divergences"].values())
    if divergent:
        found.append(f"{divergent} divergent NUTS transitions after warm-up; the reference may be biased")
    return found


# every file diagnose writes, in the order a commit moves them into place (the report last)
OUTPUT_FILES = (
    "reference.nc", "guide.nc", "summary.csv", "table.csv", "points.csv", "khat.png", "pair.png",
    "reconstructions.png", "report.md",
)


def _write(result: Diagnosis, out: Path, model, guide_draws, x, sites, dims, pair, ref_sd, count) -> dict[str, Path]:
    """Write the files into a staging folder inside ``out``, then replace the ones of an earlier
    diagnosis all at once (under ``out``'s lock; see :mod:`pyro_genmod.runs`): a kill or a full
    disk leaves the earlier files or the new ones, never a mix. Other files in ``out`` are kept."""
    from .errors import RunFolderError
    from .folders import take_output_folder

    taken = take_output_folder(out, OUTPUT_FILES, what="diagnose output folder")
    try:
        files = _write_files(result, taken.work, model, guide_draws, x, sites, dims, pair, ref_sd, count)
        taken.commit()
    except OSError as error:
        raise RunFolderError(f"cannot write diagnose output folder '{out}': {error.strerror or error}") from None
    finally:
        taken.release()
    return {key: out / path.name for key, path in files.items()}


def _write_files(result: Diagnosis, out: Path, model, guide_draws, x, sites, dims, pair, ref_sd, count) -> dict[str, Path]:
    files = {
        "reference": arviz_bridge.write_netcdf(result.reference, out / "reference.nc"),
        "guide": arviz_bridge.write_netcdf(result.guide, out / "guide.nc"),
    }
    for name, frame in (("summary", result.summary), ("table", result.table), ("points", result.points)):
        frame.to_csv(out / f"{name}.csv", index=name == "summary")
        files[name] = out / f"{name}.csv"
    points = list(result.points["point"])
    files["khat_plot"] = arviz_bridge.plot_khat(result.points["khat"].to_numpy(), points, out / "khat.png")
    first = sites[0]
    if len(first.event_shape) == 1 and first.size >= 2:
        if pair is None:  # the two most informative coordinates of the first site
            pair = tuple(int(i) for i in np.argsort(ref_sd[:, : first.size].mean(0))[:2])
        latent_dim = dims[first.name][1]
        files["pair_plot"] = arviz_bridge.plot_pair_overlay(
            result.reference, result.guide, first.name, latent_dim, pair, points, out / "pair.png"
        )
    recon = _reconstructions(model, guide_draws, count)
    files["reconstructions"] = _plot_reconstructions(x.cpu(), recon, points, out / "reconstructions.png")
    files["report"] = out / "report.md"
    (out / "report.md").write_text(result.report() + "\n", encoding="utf-8")
    return files

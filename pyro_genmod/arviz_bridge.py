"""Every ArviZ call in the library lives here, so arviz 0.x and 1.x can both be supported; PSIS
k-hat is computed here too, without importing ArviZ."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = [
    "khat_reading",
    "mcmc_inference_data",
    "plot_khat",
    "plot_pair_overlay",
    "posterior_summary",
    "psis_khat",
    "psis_khat_from_tail",
    "psis_tail_size",
    "read_netcdf",
    "samples_inference_data",
    "write_netcdf",
]


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor
        import arviz

    return arviz


@contextmanager
def _quiet():
    """ArviZ 0.23 warns about its coming 1.0 API on many calls; those warnings are not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _arviz_0x():
    """ArviZ for the InferenceData functions below, which use the arviz 0.x API."""
    az = _arviz()
    if not hasattr(az, "InferenceData"):
        raise ConfigError(
            f"posterior diagnostics use the arviz 0.x InferenceData API, but arviz "
            f"{az.__version__} is installed; install 'arviz<1' (Python 3.11 gets 0.23)"
        )
    return az


def psis_khat(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k-hat of each row of ``log_weights`` (shape ``(points, samples)``): the k-hat
    ``arviz.psislw`` returns (arviz 0.x; tested equal), computed here from each row's
    :func:`psis_tail_size` largest weights, so scoring never imports ArviZ (about 130 MiB).
    Rows too short for a Pareto tail fit (about 25 samples or fewer) get NaN rather than
    arviz's ``inf``."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    num_samples = log_weights.shape[-1]
    if num_samples < 5:  # no tail to fit; arviz itself fails below 2 samples
        return np.full(log_weights.shape[:-1], np.nan)
    keep = min(psis_tail_size(num_samples), num_samples)
    tails = np.partition(log_weights, num_samples - keep, axis=-1)[..., num_samples - keep :]
    return psis_khat_from_tail(tails, num_samples)


def psis_tail_size(num_samples: int) -> int:
    """How many of the largest log weights PSIS reads: arviz fits its Pareto tail to the
    ``ceil(min(K / 5, 3 sqrt(K)))`` largest and cuts at the next one, so k-hat depends on the
    ``1 +`` that many largest of the K weights only."""
    return int(np.ceil(min(num_samples / 5.0, 3 * num_samples**0.5))) + 1


def psis_khat_from_tail(tails: np.ndarray, num_samples: int) -> np.ndarray:
    """The k-hat :func:`psis_khat` gives for rows of ``num_samples`` log weights, from only the
    :func:`psis_tail_size` largest of each row (``tails``, shape ``(points, tail size)``), so
    scoring with any K never holds K weights per point.

    The steps are arviz 0.23's per-row PSIS (``arviz.stats.stats._psislw`` and ``_gpdfit``,
    Vehtari et al. 2024, Zhang & Stephens 2009), written out with numpy: the cut at the
    smallest kept weight, the exceedances over it, the empirical-Bayes generalized Pareto fit
    and its weak prior on k.

    References:
        | Pareto Smoothed Importance Sampling (Vehtari et al., 2024) https://arxiv.org/abs/1507.02646
        | A New and Efficient Estimation Method for the Generalized Pareto Distribution (Zhang & Stephens, 2009)
    """
    tails = np.sort(np.asarray(tails, dtype=np.float64), axis=-1)
    if num_samples < 5:
        return np.full(tails.shape[:-1], np.nan)
    cutoffmin = np.log(np.finfo(float).tiny)
    rows = tails.reshape(-1, tails.shape[-1])
    khat = np.empty(rows.shape[0])
    with np.errstate(all="ignore"):
        for i, row in enumerate(rows):
            x = row - row[-1]  # the largest weight becomes 0, as arviz shifts
            cut = max(x[0], cutoffmin)
            tail = x[x > cut]  # already sorted
            khat[i] = _gpd_shape(np.exp(tail) - np.exp(cut)) if tail.size > 4 else np.nan
    khat = khat.reshape(tails.shape[:-1])
    return np.where(np.isfinite(khat), khat, np.nan)


def _gpd_shape(exceedances: np.ndarray) -> float:
    """Shape k of a generalized Pareto fit to sorted ``exceedances``: Zhang & Stephens'
    posterior mean of b on a grid of ``30 + sqrt(n)`` points, then k with a weak prior
    pulling it toward 0.5 (10 pseudo-observations), as arviz's ``_gpdfit`` does."""
    n = exceedances.size
    m = 30 + int(n**0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b /= 3 * exceedances[int(n / 4 + 0.5) - 1]
    b += 1 / exceedances[-1]
    k = np.log1p(-b[:, None] * exceedances).mean(axis=1)
    len_scale = n * (np.log(-(b / k)) - k - 1)
    weights = 1 / np.exp(len_scale - len_scale[:, None]).sum(axis=1)
    real = weights >= 10 * np.finfo(float).eps
    if not real.all():
        weights, b = weights[real], b[real]
    weights /= weights.sum()
    b_post = np.sum(b * weights)
    k_post = np.log1p(-b_post * exceedances).mean()
    return (n * k_post + 10 * 0.5) / (n + 10)


def khat_reading(khat: float) -> str:
    """Vehtari et al.'s reading of a k-hat value."""
    if not np.isfinite(khat):
        return "unknown (too few samples)"
    if khat < 0.5:
        return "good"
    if khat <= 0.7:
        return "usable"
    return "unreliable"


def mcmc_inference_data(runs: list, coords: dict, dims: dict):
    """One ``InferenceData`` from single-chain Pyro ``MCMC`` runs, chains stacked in order.

    Each run goes through ``az.from_pyro`` (posterior, divergences, observed data) and the runs
    are joined along ``chain`` with ``az.concat``.
    """
    az = _arviz_0x()
    with _quiet():
        parts = [az.from_pyro(run, log_likelihood=False, coords=coords, dims=dims) for run in runs]
        return parts[0] if len(parts) == 1 else az.concat(*parts, dim="chain")


def samples_inference_data(
    posterior: dict[str, np.ndarray],
    coords: dict,
    dims: dict,
    sample_stats: dict[str, np.ndarray] | None = None,
    observed_data: dict[str, np.ndarray] | None = None,
):
    """``az.from_dict`` for draws shaped ``(chain, draw, *shape)``, with named dims and coords."""
    az = _arviz_0x()
    with _quiet():
        return az.from_dict(
            posterior=posterior, sample_stats=sample_stats, observed_data=observed_data, coords=coords, dims=dims
        )


def posterior_summary(idata, var_names: list[str] | None = None):
    """``az.summary`` of the posterior: a wide table (pandas) and the same numbers as an
    xarray Dataset with a ``metric`` dimension (``mean``, ``sd``, ``mcse_mean``, ``mcse_sd``,
    ``ess_bulk``, ``ess_tail``, ``r_hat``, HDI bounds), unrounded."""
    az = _arviz_0x()
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant draws (a Delta guide) have no R-hat
        table = az.summary(idata, var_names=var_names, round_to="none")
        arrays = az.summary(idata, var_names=var_names, round_to="none", fmt="xarray")
    return table, arrays


def _netcdf_engine() -> str:
    import importlib.util

    for engine, module in (("h5netcdf", "h5netcdf"), ("netcdf4", "netCDF4")):
        if importlib.util.find_spec(module) is not None:
            return engine
    raise ConfigError("writing InferenceData to netCDF needs h5netcdf or netCDF4; pip install h5netcdf")


def write_netcdf(idata, path: str | Path) -> Path:
    """Write ``idata`` (all groups) to a netCDF4 file at ``path``."""
    _arviz_0x()
    with _quiet():
        idata.to_netcdf(str(path), engine=_netcdf_engine())
    return Path(path)


def read_netcdf(path: str | Path):
    """Load an ``InferenceData`` written by :func:`write_netcdf`, fully into memory."""
    az = _arviz_0x()
    with _quiet():
        idata = az.from_netcdf(str(path), engine=_netcdf_engine())
        return idata.load() if hasattr(idata, "load") else idata


def plot_khat(khat: np.ndarray, points, path: str | Path, title: str = "") -> Path:
    """``az.plot_khat`` of one k-hat per point, with the 0.5 and 0.7 thresholds, saved as PNG."""
    import matplotlib.pyplot as plt
    import xarray as xr

    az = _arviz_0x()
    values = xr.DataArray(np.asarray(khat, dtype=np.float64), dims=["point"], coords={"point": list(points)})
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * values.size + 2), 3.2))
    with _quiet():
        az.plot_khat(values, xlabels=True, ax=ax, markersize=40, textsize=9)
    for level, style in ((0.5, ":"), (0.7, "--")):
        ax.axhline(level, color="0.4", linestyle=style, linewidth=1)
    ax.set_xlabel("test point")
    ax.set_ylabel("PSIS k-hat")
    ax.set_title(title or "PSIS k-hat per point (< 0.5 good, > 0.7 unreliable)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pair_overlay(
    reference, guide, var_name: str, latent_dim: str, pair: tuple, points, path: str | Path
) -> Path:
    """Pair plot of two latent coordinates, one panel per point: NUTS reference draws (grey)
    under the guide's draws (orange), both through ``az.plot_pair``."""
    import matplotlib.pyplot as plt

    az = _arviz_0x()
    points = list(points)
    cols = min(4, len(points))
    rows = -(-len(points) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax, point in zip(axes.flat, points):
        coords = {"point": [point], latent_dim: list(pair)}
        with _quiet():
            for idata, color, label in ((reference, "0.45", "NUTS"), (guide, "C1", "guide")):
                az.plot_pair(
                    idata, var_names=[var_name], coords=coords, kind="scatter", ax=ax, textsize=8,
                    scatter_kwargs={"color": color, "alpha": 0.35, "s": 5, "label": label},
                )
        ax.set_title(f"point {point}", fontsize=9)
        ax.set_xlabel(f"{var_name}[{pair[0]}]", fontsize=8)
        ax.set_ylabel(f"{var_name}[{pair[1]}]", fontsize=8)
    for ax in list(axes.flat)[len(points):]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="best", fontsize=8, markerscale=3)
    fig.suptitle(f"{var_name}[{pair[0]}] vs {var_name}[{pair[1]}]: NUTS reference and guide", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

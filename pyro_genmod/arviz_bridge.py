"""Every ArviZ call in the library lives here, so arviz 0.x and 1.x can both be supported."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = [
    "psis_khat",
    "psis_tail_size",
    "psis_khat_from_tail",
    "khat_reading",
    "mcmc_inference_data",
    "samples_inference_data",
    "posterior_summary",
    "write_netcdf",
    "read_netcdf",
    "plot_khat",
    "plot_pair_overlay",
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
    """Pareto k-hat of each row of ``log_weights`` (shape ``(points, samples)``).

    Uses ``arviz.psislw`` on arviz 0.x and ``arviz_stats``'s ``psislw`` on arviz 1.x (which
    takes the negated log weights). Rows too short for a Pareto tail fit (arviz needs about 25
    or more samples) get NaN rather than arviz's ``inf``.
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.shape[-1] < 5:  # no tail to fit; arviz itself fails below 2 samples
        return np.full(log_weights.shape[:-1], np.nan)
    az = _arviz()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if hasattr(az, "psislw"):
            _, khat = az.psislw(log_weights)
        else:  # arviz >= 1.0
            from arviz_stats.base import array_stats

            _, khat = array_stats.psislw(-log_weights)
    khat = np.asarray(khat, dtype=np.float64)
    return np.where(np.isfinite(khat), khat, np.nan)


def psis_tail_size(num_samples: int) -> int:
    """How many of the largest log weights PSIS reads: arviz fits its Pareto tail to the
    ``ceil(min(K / 5, 3 sqrt(K)))`` largest and cuts at the next one, so k-hat depends on the
    ``1 +`` that many largest of the K weights only."""
    return int(np.ceil(min(num_samples / 5.0, 3 * num_samples**0.5))) + 1


def psis_khat_from_tail(tails: np.ndarray, num_samples: int) -> np.ndarray:
    """The k-hat :func:`psis_khat` gives for rows of ``num_samples`` log weights, from only the
    :func:`psis_tail_size` largest of each row (``tails``, shape ``(points, tail size)``), so
    scoring with any K never holds K weights per point. It runs arviz 0.x's own per-row PSIS
    step (``arviz.stats.stats._psislw``) with the cut at the smallest kept weight, where
    ``psislw`` on the whole row cuts; where that function is absent (arviz 1.x) k-hat is NaN."""
    tails = np.sort(np.asarray(tails, dtype=np.float64), axis=-1)
    if num_samples < 5:
        return np.full(tails.shape[:-1], np.nan)
    _arviz()  # imported once, quietly
    try:
        from arviz.stats.stats import _psislw
    except ImportError:  # pragma: no cover - arviz 1.x
        return np.full(tails.shape[:-1], np.nan)
    cutoffmin = np.log(np.finfo(float).tiny)
    khat = np.empty(tails.shape[0])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for i, row in enumerate(tails):
            khat[i] = _psislw(row.copy(), 0, cutoffmin, False)[1]
    return np.where(np.isfinite(khat), khat, np.nan)


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

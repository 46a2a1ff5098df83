"""Every ArviZ call in the library lives here, so arviz 0.x and 1.x can both be supported."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["psis_khat", "khat_reading"]


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor
        import arviz

    return arviz


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


def khat_reading(khat: float) -> str:
    """Vehtari et al.'s reading of a k-hat value."""
    if not np.isfinite(khat):
        return "unknown (too few samples)"
    if khat < 0.5:
        return "good"
    if khat <= 0.7:
        return "usable"
    return "unreliable"

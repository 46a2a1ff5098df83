"""The per-point log-likelihood estimate every scorer returns (importance sampling, AIS), with its
standard error, the per-point bound, and PSIS k-hat diagnostics (a leaf module)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

__all__ = ["LogLikelihood", "bits_per_dim", "khat_nan_message"]


@dataclass
class LogLikelihood:
    """Per-point importance-sampled log p(x) with its diagnostics.

    Attributes:
        per_point: IS estimate of log p(x) for each point, shape ``(N,)``.
        elbo: per-point ELBO, the mean log weight over the same K draws, shape ``(N,)``.
        khat: per-point PSIS Pareto k-hat (NaN when K is too small to fit a tail, or when
            k-hat was not requested). A NaN k-hat is neither reliable nor unreliable: it is
            counted apart, in :attr:`khat_nan`.
        num_samples: K.
    """

    per_point: Tensor
    elbo: Tensor
    khat: np.ndarray
    num_samples: int

    @property
    def mean(self) -> float:
        return float(self.per_point.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over data points."""
        n = self.per_point.numel()
        return float(self.per_point.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def elbo_mean(self) -> float:
        return float(self.elbo.mean())

    @property
    def khat_mean(self) -> float:
        return float(np.nanmean(self.khat)) if np.isfinite(self.khat).any() else float("nan")

    @property
    def khat_max(self) -> float:
        return float(np.nanmax(self.khat)) if np.isfinite(self.khat).any() else float("nan")

    @property
    def khat_above_07(self) -> float:
        """Share of all points whose k-hat exceeds 0.7 (estimate unreliable there); points with a
        NaN k-hat are not counted here (see :attr:`khat_nan`)."""
        return float(np.mean(self.khat > 0.7))

    @property
    def khat_nan_count(self) -> int:
        """Number of points whose k-hat is NaN (not computed or not computable)."""
        return int(np.isnan(self.khat).sum())

    @property
    def khat_nan(self) -> float:
        """Share of points whose k-hat is NaN: their reliability is unknown."""
        return self.khat_nan_count / self.khat.size if self.khat.size else float("nan")

    @property
    def khat_reliable(self) -> float:
        """Share of points with a k-hat of at most 0.7. With :attr:`khat_above_07` and
        :attr:`khat_nan` it sums to 1: a NaN k-hat is not counted as reliable."""
        return float(np.mean(self.khat <= 0.7))

    def summary(self) -> dict:
        def clean(v: float):
            return v if math.isfinite(v) else None

        return {
            "log_likelihood": self.mean,
            "log_likelihood_stderr": clean(self.stderr),
            "elbo": self.elbo_mean,
            "num_importance_samples": self.num_samples,
            "num_points": int(self.per_point.numel()),
            "khat_mean": clean(self.khat_mean),
            "khat_max": clean(self.khat_max),
            "khat_above_0.7": self.khat_above_07,
            "khat_nan": self.khat_nan,
        }

    def __repr__(self) -> str:
        return (
            f"LogLikelihood(mean={self.mean:.3f}, stderr={self.stderr:.3f}, "
            f"elbo={self.elbo_mean:.3f}, K={self.num_samples}, khat_mean={self.khat_mean:.3f})"
        )


def khat_nan_message(count: int, total: int, num_samples: int) -> str:
    """Why ``count`` of ``total`` points have no k-hat, and what to do about it."""
    return (
        f"PSIS k-hat is NaN for {count} of {total} points, so the reliability of their log p(x) "
        f"estimates is unknown (K={num_samples} importance samples are too few to fit a Pareto tail, "
        f"or the weights are degenerate); score with K >= 100 to get k-hat"
    )


def bits_per_dim(log_likelihood: float, num_dims: int) -> float:
    """-log p(x) in bits per data dimension: -log_likelihood / (num_dims ln 2), the unit image
    likelihoods are reported in (Kingma et al. 2021). For discrete pixels (binarized, or a
    discretized likelihood) it is the code length; for a density over continuous values it has
    no dequantization offset, so compare it only with the same data."""
    return -float(log_likelihood) / (int(num_dims) * math.log(2.0))

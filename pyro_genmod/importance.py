"""Per-point importance-sampled log-likelihood, vectorized over a particle dimension.

log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x),  z_k ~ q(. | x).

Pyro's ``vectorized_importance_weights`` and ``psis_diagnostic`` sum the log weights over the
data plate, giving one number per batch; here the data dimension is kept, so each point gets
its own estimate, ELBO and PSIS k-hat.

Discrete latent sites are scored by sampling, not enumeration: the guide is a discrete
proposal q(k|x) (``categorical``, ``exact_posterior``, or ``prior``) and log q(k|x) enters the
weight like any other site. With ``exact_posterior`` the estimate is then exact.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine
from torch import Tensor

from .densities import log_densities
from .arviz_bridge import psis_khat
from .errors import ConfigError, KhatWarning
from .latents import check_pair
from .programs import as_guide, as_model
from .seeding import seeded

__all__ = ["log_importance_weights", "log_likelihood", "LogLikelihood", "score", "khat_nan_message"]


def log_importance_weights(model, guide, x: Tensor, num_particles: int) -> Tensor:
    """log p(x, z_k) - log q(z_k | x) for ``num_particles`` draws, shape ``(K, N)``.

    Gradients flow through it (for IWAE-type objectives); wrap in ``torch.no_grad`` to score.
    """
    model = as_model(model, x)
    guide = as_guide(guide, model, x)
    log_p, log_q = log_densities(model, guide, x, num_particles, per_point=True)  # no Pyro traces
    return (log_p - log_q).expand(num_particles, x.shape[0])


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


def log_likelihood(
    model,
    guide,
    x: Tensor,
    num_samples: int = 1000,
    *,
    max_rows: int = 32768,
    seed: int | None = None,
    khat: bool = True,
) -> LogLikelihood:
    """Importance-sampled log p(x) per data point, with ``guide`` as the proposal.

    The K particles are a plate dimension, not a Python loop. Work is chunked so that at most
    ``max_rows`` (point, particle) pairs pass through the decoder at once, keeping memory
    bounded for K up to 5000 and beyond.

    Arguments:
        model: a :class:`GenerativeModel`.
        guide: a guide for it (not a point estimate).
        x: data, shape ``(N, *model.data_shape)``.
        num_samples: K, the number of importance samples per point.
        max_rows: largest number of (point, particle) rows decoded at once.
        seed: seeds the draws (the global RNG is left untouched) for reproducible scores;
            ``None`` draws fresh noise from the global generator (see :mod:`pyro_genmod.seeding`).
        khat: compute the PSIS k-hat with ArviZ. Points whose k-hat comes out NaN (K below
            about 25 leaves no tail to fit) are counted in ``khat_nan``, and a
            :class:`~pyro_genmod.errors.KhatWarning` says how many.

    Example:
        >>> import pyro_genmod as pg
        >>> data = pg.load_dataset("digits")
        >>> model = pg.create_model("vae", data, latent_dim=2)
        >>> ll = pg.log_likelihood(model, pg.create_guide("mean_field", model), data.test[:5], 100)
        >>> ll.per_point.shape
        torch.Size([5])
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"the number of importance samples K must be a positive integer, got {num_samples}")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError(f"max_rows must be a positive integer, got {max_rows}")
    model = as_model(model, x)
    guide = as_guide(guide, model, x)
    if not getattr(model, "has_log_likelihood", True):
        raise ConfigError(
            f"model '{getattr(model, 'registry_name', type(model).__name__)}' has an improper "
            f"prior, so log p(x) is undefined and cannot be estimated; compare its reconstruction "
            f"(the validation ELBO) instead"
        )
    if getattr(guide, "is_point_estimate", False):
        name = getattr(guide, "registry_name", type(guide).__name__)
        raise ConfigError(
            f"guide '{name}' is a point estimate, not a density, so it cannot be an "
            f"importance-sampling proposal; score with create_guide('prior', model) instead"
        )
    check_pair(model, guide)
    model.validate_data(x)
    device = next((p.device for p in model.parameters()), x.device)
    particles_per_chunk = min(num_samples, max_rows)
    points_per_chunk = max(1, max_rows // particles_per_chunk)
    estimates, elbos, khats = [], [], []
    with seeded(seed):
        with torch.no_grad(), poutine.block():
            for start in range(0, x.shape[0], points_per_chunk):
                chunk = x[start : start + points_per_chunk].to(device)
                log_w = torch.cat(
                    [
                        log_importance_weights(model, guide, chunk, min(particles_per_chunk, num_samples - k))
                        for k in range(0, num_samples, particles_per_chunk)
                    ]
                )
                estimates.append(torch.logsumexp(log_w, dim=0) - math.log(num_samples))
                elbos.append(log_w.mean(dim=0))
                if khat:
                    khats.append(psis_khat(log_w.T.double().cpu().numpy()))
    per_point = torch.cat(estimates).cpu()
    result = LogLikelihood(
        per_point=per_point,
        elbo=torch.cat(elbos).cpu(),
        khat=np.concatenate(khats) if khat else np.full(per_point.numel(), np.nan),
        num_samples=num_samples,
    )
    if khat and result.khat_nan_count:
        warnings.warn(khat_nan_message(result.khat_nan_count, per_point.numel(), num_samples), KhatWarning, stacklevel=2)
    return result


def khat_nan_message(count: int, total: int, num_samples: int) -> str:
    """Why ``count`` of ``total`` points have no k-hat, and what to do about it."""
    return (
        f"PSIS k-hat is NaN for {count} of {total} points, so the reliability of their log p(x) "
        f"estimates is unknown (K={num_samples} importance samples are too few to fit a Pareto tail, "
        f"or the weights are degenerate); score with K >= 100 to get k-hat"
    )


def score(model, guide, x, num_samples: int, seed: int = 0) -> tuple[LogLikelihood, str]:
    """IS log-likelihood of ``x``; a point-estimate guide is replaced by the prior as proposal.

    Returns the estimate and the name of the proposal used. A model with an improper prior
    (``has_log_likelihood = False``, e.g. ``ae``) has no log p(x): its estimate is NaN, its
    ELBO the guide's single-draw bound (the reconstruction log-likelihood), proposal "none".
    """
    if not getattr(model, "has_log_likelihood", True):
        with torch.no_grad():
            chunks = [log_importance_weights(model, guide, x[i : i + 1024], 1)[0] for i in range(0, x.shape[0], 1024)]
        elbo = torch.cat(chunks).cpu()
        nan = torch.full_like(elbo, float("nan"))
        return LogLikelihood(per_point=nan, elbo=elbo, khat=nan.numpy(), num_samples=num_samples), "none"
    proposal = guide
    if getattr(guide, "is_point_estimate", False):
        from .factories import create_guide

        proposal = create_guide("prior", model)
    return log_likelihood(model, proposal, x, num_samples, seed=seed), proposal.registry_name

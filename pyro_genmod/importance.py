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

import numpy as np
import torch
from pyro import poutine
from torch import Tensor
from tqdm.auto import tqdm

from .arviz_bridge import psis_khat, psis_khat_from_tail, psis_tail_size
from .checks import as_points, check_positive_int
from .densities import log_densities
from .errors import ConfigError, KhatWarning
from .estimates import LogLikelihood, khat_nan_message
from .latents import check_pair
from .programs import as_guide, as_model
from .seeding import check_seed, seeded

CPU_ROWS = 4096  # log_likelihood's default chunk on a CPU (see max_rows)

__all__ = ["LogLikelihood", "khat_nan_message", "log_importance_weights", "log_likelihood", "score"]


def log_importance_weights(model, guide, x: Tensor, num_particles: int) -> Tensor:
    """log p(x, z_k) - log q(z_k | x) for ``num_particles`` draws, shape ``(K, N)``.

    Gradients flow through it (for IWAE-type objectives); wrap in ``torch.no_grad`` to score.
    """
    model = as_model(model, x)
    guide = as_guide(guide, model, x)
    log_p, log_q = log_densities(model, guide, x, num_particles, per_point=True)  # no Pyro traces
    return (log_p - log_q).expand(num_particles, x.shape[0])


def _stream(model, guide, x: Tensor, num_samples: int, per_chunk: int, khat: bool, bar):
    """Draw ``num_samples`` log weights for the points ``x`` in chunks of ``per_chunk``, keeping
    only their log-sum-exp, their mean (accumulated in float64) and, with ``khat``, the
    :func:`psis_tail_size` largest per point; returns the three, shapes ``(N,)``, ``(N,)`` and
    ``(tail, N)``."""
    keep = psis_tail_size(num_samples) if khat else 0
    total = mean = tail = None
    for k in range(0, num_samples, per_chunk):
        log_w = log_importance_weights(model, guide, x, min(per_chunk, num_samples - k))
        part = torch.logsumexp(log_w.double(), dim=0)
        total = part if total is None else torch.logaddexp(total, part)
        mean = log_w.double().sum(dim=0) if mean is None else mean + log_w.double().sum(dim=0)
        if keep:
            pool = log_w if tail is None else torch.cat([tail, log_w])
            tail = pool.topk(min(keep, pool.shape[0]), dim=0).values
        bar.update(x.shape[0] * log_w.shape[0])
    return total.float(), (mean / num_samples).float(), tail


def log_likelihood(
    model,
    guide,
    x: Tensor,
    num_samples: int = 1000,
    *,
    max_rows: int | None = None,
    seed: int | None = None,
    khat: bool = True,
    method: str = "is",
    num_steps: int = 100,
    leapfrog_steps: int = 5,
    step_size: float = 0.05,
    progress: bool | None = None,
) -> LogLikelihood:
    """Importance-sampled log p(x) per data point, with ``guide`` as the proposal.

    ``method="ais"`` anneals from the guide to p(z|x) instead (:mod:`pyro_genmod.ais`), with
    ``num_samples`` chains per point, ``num_steps`` intermediate distributions and
    ``leapfrog_steps`` per HMC transition (initial ``step_size``); the result also carries each point's Monte Carlo
    standard error across chains and the acceptance rate.

    The K particles are a plate dimension, not a Python loop. Work is chunked so that at most
    ``max_rows`` (point, particle) pairs pass through the decoder at once. With K above
    ``max_rows`` each point's draws are streamed: only a running log-sum-exp and sum and, for
    k-hat, the ``ceil(min(K/5, 3 sqrt(K))) + 1`` largest log weights (all that PSIS reads) are
    kept, so memory stays bounded for any K (1e8 holds about 30,000 weights per point).

    Arguments:
        model: a :class:`GenerativeModel`.
        guide: a guide for it (not a point estimate).
        x: data, shape ``(N, *model.data_shape)``.
        num_samples: K, the number of importance samples per point.
        max_rows: largest number of (point, particle) rows decoded at once; ``None`` (the
            default): 4096 on a CPU, where a chunk that size is both the fastest (its working
            set stays in cache) and the lightest (issue 21, ``benchmarks/results/peers.md``),
            and 32,768 on an accelerator, where bigger launches pay.
        seed: seeds the draws (the global RNG is left untouched) for reproducible scores;
            ``None`` draws fresh noise from the global generator (see :mod:`pyro_genmod.seeding`).
        progress: a tqdm bar counting the draws; ``None`` (the default): for long jobs (10
            million draws or more) when stderr is a terminal, so ``genmod evaluate -K 100000000``
            shows its progress.
        khat: compute the PSIS k-hat (ArviZ's, computed without importing ArviZ). Points
            whose k-hat comes out NaN (K below about 25 leaves no tail to fit) are counted in ``khat_nan``, and a
            :class:`~pyro_genmod.errors.KhatWarning` says how many.

    Example:
        >>> import pyro_genmod as pg
        >>> data = pg.load_dataset("digits")
        >>> model = pg.create_model("vae", data, latent_dim=2)
        >>> ll = pg.log_likelihood(model, pg.create_guide("mean_field", model), data.test[:5], 100)
        >>> ll.per_point.shape
        torch.Size([5])
    """
    check_positive_int("the number of importance samples K", num_samples)  # True is not a K
    if max_rows is not None:
        check_positive_int("max_rows", max_rows)
    check_seed(seed)
    if method not in ("is", "ais"):
        raise ConfigError(f"unknown scoring method {method!r}; use 'is' (importance sampling) or 'ais'")
    if method == "ais":
        from .ais import ais_log_likelihood

        return ais_log_likelihood(
            model, guide, x, num_samples, num_steps, leapfrog_steps=leapfrog_steps, step_size=step_size,
            max_rows=min(max_rows or 8192, 8192), seed=seed, khat=khat,
        )
    x = as_points(x)  # float64 or integer points are converted (as_points' rule)
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
    if max_rows is None:
        max_rows = CPU_ROWS if device.type == "cpu" else 32768
    particles_per_chunk = min(num_samples, max_rows)
    points_per_chunk = max(1, max_rows // particles_per_chunk)
    estimates, elbos, khats = [], [], []
    draws = x.shape[0] * num_samples
    quiet = not progress if progress is not None else (None if draws >= 10**7 else True)  # None: on a terminal
    bar = tqdm(total=draws, unit="draw", unit_scale=True, desc="scoring", leave=False, disable=quiet)
    with seeded(seed), bar, torch.no_grad(), poutine.block():
        for start in range(0, x.shape[0], points_per_chunk):
            chunk = x[start : start + points_per_chunk].to(device)
            if particles_per_chunk == num_samples:  # all K draws of these points at once
                log_w = log_importance_weights(model, guide, chunk, num_samples)
                estimates.append(torch.logsumexp(log_w, dim=0) - math.log(num_samples))
                elbos.append(log_w.mean(dim=0))
                if khat:
                    khats.append(psis_khat(log_w.T.double().cpu().numpy()))
                bar.update(chunk.shape[0] * num_samples)
                continue
            # K > max_rows: one point, its draws streamed in chunks of max_rows; memory stays
            # bounded for any K (the running log-sum-exp and sum, and the PSIS tail).
            total, mean, tail = _stream(model, guide, chunk, num_samples, particles_per_chunk, khat, bar)
            estimates.append(total - math.log(num_samples))
            elbos.append(mean)
            if khat:
                khats.append(psis_khat_from_tail(tail.T.cpu().numpy(), num_samples))
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


def score(
    model, guide, x, num_samples: int, seed: int = 0, *, method: str = "is", **ais_options
) -> tuple[LogLikelihood, str]:
    """Log-likelihood of ``x`` (IS, or AIS with ``method="ais"`` and its options, e.g.
    ``num_steps``); a point-estimate guide is replaced by the prior as proposal (AIS: also a
    guide that cannot score the points the chains visit, such as a planar flow).

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
    own_samples_only = method == "ais" and getattr(guide, "scores_own_samples_only", False)
    if getattr(guide, "is_point_estimate", False) or own_samples_only:
        from .factories import create_guide

        proposal = create_guide("prior", model)
    if method == "ais":
        from .ais import ais_log_likelihood

        return ais_log_likelihood(model, proposal, x, num_samples, seed=seed, **ais_options), proposal.registry_name
    if ais_options:
        raise ConfigError(f"{', '.join(sorted(ais_options))}: AIS options, given with method='is'; use method='ais'")
    return log_likelihood(model, proposal, x, num_samples, seed=seed, method=method), proposal.registry_name

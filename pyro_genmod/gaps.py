"""The inference-gap report: log p(x) - ELBO split into approximation and amortization gaps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import as_points, check_positive_int
from .diagnose import check_continuous
from .errors import ConfigError
from .importance import log_likelihood
from .latents import check_pair
from .programs import as_guide, as_model
from .seeding import check_seed

__all__ = ["InferenceGaps", "inference_gaps"]


def _has_local_family(guide) -> bool:
    from pyro_genmod.guides.base import AmortizedGuide, Guide

    return isinstance(guide, AmortizedGuide) and type(guide).forward is Guide.forward


@dataclass
class InferenceGaps:
    """Per-point log p(x), amortized ELBO and local ELBO, and the gaps between them.

    Attributes:
        log_px: importance-sampled log p(x) with the local q as the proposal (the best q of the
            family for that point), shape ``(N,)``.
        elbo_amortized: the ELBO of q(z|x) from the encoder.
        elbo_local: the ELBO of the same family with parameters optimized for the point alone.
        num_samples: K, the draws behind each estimate.
        local: how ``elbo_local`` was obtained.
    """

    log_px: Tensor
    elbo_amortized: Tensor
    elbo_local: Tensor
    num_samples: int
    guide: str
    local: str

    @property
    def approximation(self) -> Tensor:
        """log p(x) - ELBO_local: what the family cannot express."""
        return self.log_px - self.elbo_local

    @property
    def amortization(self) -> Tensor:
        """ELBO_local - ELBO_amortized: what the encoder loses by sharing one network."""
        return self.elbo_local - self.elbo_amortized

    @property
    def total(self) -> Tensor:
        """log p(x) - ELBO_amortized = approximation + amortization."""
        return self.log_px - self.elbo_amortized

    def summary(self) -> dict:
        """Mean and standard error (over points) of each quantity."""
        out = {
            "guide": self.guide, "num_points": int(self.log_px.numel()), "num_samples": self.num_samples,
            "local": self.local,
        }
        for name in ("log_px", "elbo_amortized", "elbo_local", "approximation", "amortization", "total"):
            mean, stderr = _mean_stderr(getattr(self, name))
            out[name], out[f"{name}_stderr"] = mean, stderr
        return out

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"InferenceGaps(guide={self.guide!r}, total={s['total']:.3f}+/-{s['total_stderr']:.3f}, "
            f"approximation={s['approximation']:.3f}+/-{s['approximation_stderr']:.3f}, "
            f"amortization={s['amortization']:.3f}+/-{s['amortization_stderr']:.3f}, N={s['num_points']})"
        )


def _mean_stderr(values: Tensor) -> tuple[float, float]:
    values = values.double()
    n = values.numel()
    stderr = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return float(values.mean()), stderr


def inference_gaps(
    model,
    guide,
    x: Tensor,
    *,
    num_samples: int = 5000,
    steps: int = 500,
    lr: float = 0.05,
    num_particles: int = 16,
    seed: int = 0,
    max_rows: int = 65536,
    progress: bool = False,
) -> InferenceGaps:
    """Split each point's inference gap log p(x) - ELBO into approximation and amortization.

    log p(x) - ELBO_amortized = (log p(x) - ELBO_local) + (ELBO_local - ELBO_amortized), where
    ELBO_local is the best ELBO the guide's family reaches with parameters fitted to that point
    alone (:meth:`~pyro_genmod.guides.local.LocalGuide.refine`). A family without per-point parameters (``prior``,
    ``exact_posterior``) is its own local optimum, so its amortization gap is zero. All ELBOs
    and log p(x) use ``num_samples`` draws per point.

    References:
        | Inference Suboptimality in Variational Autoencoders (Cremer, Li & Duvenaud, 2018)
          https://arxiv.org/abs/1801.03558

    Arguments:
        model, guide: a trained pair with continuous latent sites; not a point-estimate guide.
        x: the points, shape ``(N, *model.data_shape)``; a tensor or array of another real dtype
            is converted to torch's default float dtype (:func:`~pyro_genmod.checks.as_points`).
        num_samples: K for log p(x) and the ELBOs (5000 as in Burda et al.'s protocol).
        steps, lr, num_particles: the per-point optimization (see :meth:`~pyro_genmod.guides.local.LocalGuide.refine`).
        seed: seeds every draw.
        max_rows: the largest number of (point, particle) rows decoded at once.
        progress: show a progress bar for the per-point optimization.

    Example:
        >>> import pyro_genmod as pg
        >>> data = pg.load_dataset("digits")
        >>> model = pg.create_model("vae", data, latent_dim=2)
        >>> guide = pg.create_guide("mean_field", model)
        >>> gaps = pg.inference_gaps(model, guide, data.test[:3], num_samples=100, steps=5)
        >>> gaps.approximation.shape
        torch.Size([3])
    """
    x = as_points(x)  # float64 or integer points are converted (as_points' rule)
    check_seed(seed)
    model = as_model(model, x)
    guide = as_guide(guide, model, x)
    check_positive_int("the number of importance samples K", num_samples)
    name = getattr(guide, "registry_name", type(guide).__name__)
    if getattr(guide, "is_point_estimate", False):
        raise ConfigError(
            f"guide '{name}' is a point estimate: its ELBO has no entropy term and it cannot be an "
            f"importance-sampling proposal, so it has no inference gaps; use a density guide"
        )
    check_continuous(model, "the inference-gap report")
    check_pair(model, guide)
    model.validate_data(x)
    amortized = log_likelihood(model, guide, x, num_samples, max_rows=max_rows, seed=seed, khat=False)
    if _has_local_family(guide):
        from pyro_genmod.guides.local import fit_local

        local = fit_local(
            model, x, guide, steps=steps, lr=lr, num_particles=num_particles, seed=seed, max_rows=max_rows,
            progress=progress,
        )
        chunk = max(1, max_rows // num_samples)
        estimates = [
            log_likelihood(model, local, x[s : s + chunk], num_samples, max_rows=chunk * num_samples,
                           seed=seed + 1 + s, khat=False)
            for s in range(0, x.shape[0], chunk)
        ]
        # log p(x) and ELBO_local come from the same draws, so the approximation gap is >= 0.
        # (Taking the larger of this and the amortized proposal's estimate, as Cremer et al. do
        # with their estimators, biases log p(x) upwards when the encoder is a poor proposal.)
        log_px = torch.cat([e.per_point for e in estimates])
        elbo_local = torch.cat([e.elbo for e in estimates])
        how = f"per-point optimization, {steps} Adam steps x {num_particles} particles"
    elif not any(p.requires_grad for p in guide.parameters()):
        log_px, elbo_local = amortized.per_point, amortized.elbo
        how = "the family has no per-point parameters: local = amortized"
    else:
        raise ConfigError(
            f"guide '{name}' is not an amortized family sampled from posterior_from(variational_parameters(x)), "
            f"so it cannot be refitted per point; the gaps need a guide such as mean_field, full_rank or iaf"
        )
    return InferenceGaps(log_px, amortized.elbo, elbo_local, num_samples, name, how)

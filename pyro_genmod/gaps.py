"""The inference-gap report: log p(x) - ELBO split into approximation and amortization gaps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .diagnose import check_continuous
from .errors import ConfigError
from .importance import log_importance_weights, log_likelihood
from .latents import check_pair
from .programs import as_guide, as_model
from .train import check_positive_int

__all__ = ["inference_gaps", "InferenceGaps", "optimize_local", "LocalParameters"]


class _StickingTheLanding(dist.TorchDistribution):
    """Draws through ``q`` (reparameterized) but scores with ``fixed``, a copy of ``q`` whose
    parameters are detached: the score-function term of the ELBO gradient, zero in expectation,
    is dropped, so the gradient vanishes when q equals the posterior."""

    has_rsample = True
    arg_constraints: dict = {}

    def __init__(self, q: dist.Distribution, fixed: dist.Distribution):
        self.q, self.fixed = q, fixed
        super().__init__(q.batch_shape, q.event_shape, validate_args=False)

    @property
    def support(self):
        return self.q.support

    def expand(self, batch_shape, _instance=None):
        return _StickingTheLanding(self.q.expand(batch_shape), self.fixed.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        return self.q.rsample(sample_shape)

    def log_prob(self, value):
        return self.fixed.log_prob(value)


class LocalParameters(nn.Module):
    """An amortized guide's family with free per-point parameters instead of its encoder.

    ``params`` has one row per data point, in the layout of ``guide.variational_parameters``;
    the flows or other global parts of ``guide`` are shared and held fixed.

    Arguments:
        guide: an :class:`AmortizedGuide` (anything with ``variational_parameters(x)`` and
            ``posterior_from(params)``).
        params: per-point parameters, shape ``(N, P)``.
        sticking_the_landing: score draws with detached parameters (for optimizing).
    """

    is_point_estimate = False

    def __init__(self, guide, params: Tensor, sticking_the_landing: bool = False):
        super().__init__()
        object.__setattr__(self, "_guide", guide)  # not a submodule: its weights are not ours
        self.params = params
        self.latent_sites = guide.latent_sites
        self.registry_name = f"local {getattr(guide, 'registry_name', type(guide).__name__)}"
        self.sticking_the_landing = sticking_the_landing

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        if x.shape[0] != self.params.shape[0]:
            raise ValueError(f"{self.params.shape[0]} points' parameters for {x.shape[0]} points")
        posterior = self._guide.posterior_from(self.params)
        if self.sticking_the_landing:
            fixed = self._guide.posterior_from(self.params.detach())
            posterior = {k: _StickingTheLanding(q, fixed[k]) for k, q in posterior.items()}
        with pyro.plate(getattr(self._guide, "data_plate", "data"), x.shape[0]):
            return {name: pyro.sample(name, q) for name, q in posterior.items()}


def _has_local_family(guide) -> bool:
    from pyro_genmod.guides.base import AmortizedGuide, Guide

    return isinstance(guide, AmortizedGuide) and type(guide).forward is Guide.forward


def optimize_local(
    model, guide, x: Tensor, *, steps: int = 500, lr: float = 0.05, num_particles: int = 16,
    seed: int = 0, max_rows: int = 65536, progress: bool = False,
) -> Tensor:
    """Per-point variational parameters maximizing each point's own ELBO, shape ``(N, P)``.

    Starts from the encoder's output and takes ``steps`` Adam steps (cosine-decayed learning
    rate) on the ELBO with ``num_particles`` draws per point, using the sticking-the-landing
    gradient where the family can score draws made with other parameters (not for the
    planar, radial and Sylvester flows). The model and the guide's shared weights are fixed.

    References:
        | Inference Suboptimality in Variational Autoencoders (Cremer, Li & Duvenaud, 2018)
          https://arxiv.org/abs/1801.03558
        | Sticking the Landing (Roeder, Wu & Duvenaud, 2017) https://arxiv.org/abs/1703.09194
    """
    check_positive_int("steps", steps)
    check_positive_int("num_particles", num_particles)
    stl = not getattr(guide, "scores_own_samples_only", False)
    with torch.no_grad():
        init = guide.variational_parameters(x).detach()
    chunk = max(1, max_rows // num_particles)
    result = []
    with torch.random.fork_rng(devices=[] if init.device.type == "cpu" else [init.device]):
        torch.manual_seed(seed)
        for start in range(0, x.shape[0], chunk):
            xc = x[start : start + chunk]
            params = init[start : start + chunk].clone().requires_grad_(True)
            local = LocalParameters(guide, params, sticking_the_landing=stl)
            optimizer = torch.optim.Adam([params], lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            for _ in tqdm(range(steps), desc="local ELBO", disable=not progress, leave=False):
                # The points are independent, so the sum's gradient is each point's own.
                loss = -log_importance_weights(model, local, xc, num_particles).mean(0).sum()
                (params.grad,) = torch.autograd.grad(loss, [params])
                optimizer.step()
                schedule.step()
            result.append(params.detach())
    return torch.cat(result)


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
    alone (:func:`optimize_local`). A family without per-point parameters (``prior``,
    ``exact_posterior``) is its own local optimum, so its amortization gap is zero. All ELBOs
    and log p(x) use ``num_samples`` draws per point.

    References:
        | Inference Suboptimality in Variational Autoencoders (Cremer, Li & Duvenaud, 2018)
          https://arxiv.org/abs/1801.03558

    Arguments:
        model, guide: a trained pair with continuous latent sites; not a point-estimate guide.
        x: the points, shape ``(N, *model.data_shape)``.
        num_samples: K for log p(x) and the ELBOs (5000 as in Burda et al.'s protocol).
        steps, lr, num_particles: the per-point optimization (see :func:`optimize_local`).
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
        params = optimize_local(
            model, guide, x, steps=steps, lr=lr, num_particles=num_particles, seed=seed, max_rows=max_rows,
            progress=progress,
        )
        chunk = max(1, max_rows // num_samples)
        estimates = [
            log_likelihood(
                model, LocalParameters(guide, params[s : s + chunk]), x[s : s + chunk], num_samples,
                max_rows=chunk * num_samples, seed=seed + 1 + s, khat=False,
            )
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

"""Annealed importance sampling: a per-point log p(x) for any pair with continuous latents.

AIS (Neal, 2001) moves K chains per data point from the proposal q(z|x) (the guide, or the prior)
to the posterior p(z|x) through the geometric path

    f_t(z) = q(z|x)^(1 - beta_t) p(x, z)^beta_t,   0 = beta_0 < beta_1 < ... < beta_T = 1,

with one HMC transition leaving f_t invariant at every step, and accumulates the importance
weight log w = sum_t (beta_t - beta_{t-1}) (log p(x, z_{t-1}) - log q(z_{t-1}|x)). Each chain's
exp(log w) is an unbiased estimate of p(x); the estimate is log-mean-exp over the K chains, a
stochastic lower bound that tightens as T grows (Wu, Burda, Salakhutdinov & Grosse, 2017, use it
to evaluate decoder-based models where IS with the encoder is off by nats). With T = 1 it is
plain importance sampling.

Everything is vectorized over points x chains (the chains are a Pyro plate, as in the IS scorer);
the log-densities come from the library's one engine (:func:`pyro_genmod.densities.score_program`).
HMC runs in the unconstrained space of each latent site (``biject_to(support)``, with its
log-Jacobian), with a step size per point adapted between steps towards a target acceptance rate
(the rate of the previous step, averaged over the point's chains).

References:
    | Annealed Importance Sampling (Neal, 2001) https://arxiv.org/abs/physics/9803008
    | On the Quantitative Analysis of Decoder-Based Generative Models (Wu et al., 2017)
      https://arxiv.org/abs/1611.04273
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import biject_to, constraints

from .arviz_bridge import psis_khat
from .checks import check_positive_int
from .densities import (
    _contract_densities,
    _log_prob,
    _runs_contract_programs,
    _Unvalidated,
    score_program,
)
from .errors import ConfigError
from .estimates import LogLikelihood
from .latents import check_pair, describe_support
from .programs import as_guide, as_model
from .seeding import seeded

__all__ = [
    "AISLogLikelihood",
    "AISResult",
    "BDMCResult",
    "ais_log_likelihood",
    "ais_log_weights",
    "annealing_schedule",
    "bdmc",
]


def annealing_schedule(num_steps: int) -> Tensor:
    """beta_0 = 0 < ... < beta_T = 1 on a sigmoid path (dense at both ends, as in Wu et al.)."""
    if num_steps == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.linspace(-4.0, 4.0, num_steps + 1, dtype=torch.float64)
    sig = torch.sigmoid(s)
    return (sig - sig[0]) / (sig[-1] - sig[0])


@dataclass
class AISResult:
    """Per-chain AIS log-weights ``(K, N)`` and the mean HMC acceptance rate per point ``(N,)``."""

    log_weights: Tensor
    acceptance: Tensor


MAX_ENUMERATED = 64
"""Most joint values of a model's discrete latents that AIS sums out exactly (the cost of every
density evaluation is multiplied by this number)."""


def _finite_values(site) -> Tensor | None:
    """The values of a scalar discrete site with a finite support, or ``None``."""
    support = site.support
    if tuple(site.event_shape) != ():
        return None
    if support is constraints.boolean:
        return torch.tensor([0.0, 1.0])
    if isinstance(support, constraints.integer_interval):
        return torch.arange(int(support.lower_bound), int(support.upper_bound) + 1)
    return None


class _Target:
    """log q(z|x), log p(x, z) and the log-Jacobians at unconstrained values ``u``, per (chain, point).

    Discrete latents with a small finite support are summed out of both densities exactly (each
    is replayed with all its values on an enumeration dimension left of the chains, and the
    densities are log-sum-exp'ed over those dimensions), so the chains move the continuous latents
    under the marginals q(z|x) and p(x, z)."""

    def __init__(self, model, guide, x: Tensor, num_chains: int):
        self.model, self.guide, self.x, self.k = model, guide, x, num_chains
        name = getattr(model, "registry_name", type(model).__name__)
        discrete = [site for site in model.latent_sites if site.discrete]
        self.sites = [site for site in model.latent_sites if not site.discrete]
        if not self.sites:
            raise ConfigError(
                f"AIS moves continuous latents with HMC, and model '{name}' has only discrete ones "
                f"({', '.join(s.name for s in discrete)}); score it with method='is' instead"
            )
        self.transforms = {s.name: biject_to(s.support) for s in self.sites}
        self.dim = -(model.max_plate_nesting + 1)
        self.enumerated: dict[str, Tensor] = {}
        combinations = 1
        for i, site in enumerate(discrete):
            values = _finite_values(site)
            if values is None:
                raise ConfigError(
                    f"AIS sums discrete latents out, and site '{site.name}' of model '{name}' is not a "
                    f"scalar with finitely many values ({describe_support(site.support)}, shape "
                    f"{tuple(site.event_shape)}); score this model with method='is' instead"
                )
            combinations *= values.numel()
            if combinations > MAX_ENUMERATED:
                raise ConfigError(
                    f"AIS sums discrete latents out, and those of model '{name}' take {combinations} or "
                    f"more joint values (at most {MAX_ENUMERATED} are summed); score it with method='is' instead"
                )
            # site i on its own dimension, left of the chains' plate and of the earlier sites
            shape = (values.numel(),) + (1,) * (-self.dim + i)
            self.enumerated[site.name] = values.to(x.device).reshape(shape)
        # A pair running the contracts' own programs is scored from its distributions directly
        # (the engine's single-particle path): q(z|x) is built once for the chunk, not at every
        # leapfrog step, and no Pyro messengers run.
        self.posterior = None
        if not self.enumerated and _runs_contract_programs(model, guide):
            with torch.no_grad():
                self.posterior = guide.posterior(x)

    def plate(self):
        return pyro.plate("num_particles_vectorized", self.k, dim=self.dim)

    def initial(self) -> dict[str, Tensor]:
        """Draws z ~ q(z|x) per chain and point, as unconstrained values."""
        with torch.no_grad(), poutine.block(), pyro.validation_enabled(False), self.plate():
            values = score_program(self.guide, self.x, per_point=True).values
        return {
            n: self.transforms[n].inv(values[n].expand(self.k, *values[n].shape[1:]))
            for n in values if n in self.transforms
        }

    def densities(self, u: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(log q(z|x), log p(x, z), log |dz/du|) at z = T(u), each of shape ``(K, N)``."""
        z, log_jac = {}, 0.0
        for site in self.sites:
            t = self.transforms[site.name]
            value = t(u[site.name])
            jac = t.log_abs_det_jacobian(u[site.name], value)
            extra = jac.dim() - 2  # sum the event dimensions the transform left
            log_jac = log_jac + (jac.sum(tuple(range(-extra, 0))) if extra > 0 else jac)
            z[site.name] = value
        shape = (self.k, self.x.shape[0])
        if self.posterior is not None:
            with _Unvalidated():
                log_q = sum(_log_prob(self.posterior[name], value) for name, value in z.items())
                log_p, _ = _contract_densities(self.model, _Given(z, log_q), self.x)
            return log_q.expand(shape), log_p.expand(shape), torch.as_tensor(log_jac).expand(shape)
        replay = {**z, **self.enumerated}
        with poutine.block(), pyro.validation_enabled(False), self.plate():
            log_q = score_program(self.guide, self.x, replay=replay, per_point=True, strict=True).total
            log_p = score_program(self.model, self.x, replay=replay, per_point=True).total
        return self._sum_out(log_q), self._sum_out(log_p), torch.as_tensor(log_jac).expand(shape)

    def _sum_out(self, log_density: Tensor) -> Tensor:
        """``(K, N)``: the density log-sum-exp'ed over the enumerated discrete values."""
        shape = (self.k, self.x.shape[0])
        if not self.enumerated:
            return log_density.expand(shape)
        full = (*(v.numel() for v in reversed(self.enumerated.values())), *shape)
        return torch.logsumexp(log_density.expand(full).reshape(-1, *shape), dim=0)


class _Given:
    """A guide stand-in whose draw is given: the latents the chains are at, and their log q."""

    def __init__(self, latents: dict[str, Tensor], log_q: Tensor):
        self.latents, self.log_q = latents, log_q

    def sample_with_log_prob(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return self.latents, self.log_q


def ais_log_weights(
    model, guide, x: Tensor, num_chains: int, num_steps: int, *, leapfrog_steps: int = 5,
    step_size: float = 0.05, target_accept: float = 0.65,
) -> AISResult:
    """Run AIS for the points ``x`` with ``num_chains`` chains each and ``num_steps`` intermediate
    distributions; return the per-chain log-weights (no gradients flow to the networks)."""
    target = _Target(model, guide, x, num_chains)
    betas = annealing_schedule(num_steps).tolist()
    u = target.initial()
    n = x.shape[0]
    log_w = torch.zeros(num_chains, n, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    eps = torch.full((n,), float(step_size), dtype=log_w.dtype, device=x.device)
    accepted = torch.zeros(n, dtype=log_w.dtype, device=x.device)
    with _frozen(model, guide):
        with torch.no_grad():
            log_q, log_p, _ = target.densities(u)
        for t in range(1, len(betas)):
            beta_prev, beta = betas[t - 1], betas[t]
            log_w = log_w + (beta - beta_prev) * (log_p - log_q).detach()
            if t == len(betas) - 1:
                break  # the last weight needs no transition after it
            u, log_q, log_p, rate = _hmc(target, u, beta, eps, leapfrog_steps)
            accepted = accepted + rate
            eps = eps * torch.exp(0.5 * (rate - target_accept)).clamp(0.5, 2.0)  # towards the target rate
    transitions = max(1, len(betas) - 2)
    return AISResult(log_weights=log_w, acceptance=accepted / transitions)


@contextmanager
def _frozen(*modules):
    """The networks' parameters held fixed (no gradients) while the chains move, then restored."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _log_target(target: _Target, u: dict[str, Tensor], beta: float):
    log_q, log_p, log_jac = target.densities(u)
    return (1 - beta) * log_q + beta * log_p + log_jac, log_q, log_p


def _grad(target: _Target, u: dict[str, Tensor], beta: float):
    u = {k: v.detach().requires_grad_(True) for k, v in u.items()}
    with torch.enable_grad():
        value, log_q, log_p = _log_target(target, u, beta)
        grads = torch.autograd.grad(value.sum(), list(u.values()))
    return dict(zip(u, grads)), value.detach(), log_q.detach(), log_p.detach()


def _hmc(target: _Target, u: dict[str, Tensor], beta: float, eps: Tensor, leapfrog_steps: int):
    """One HMC transition leaving f_beta invariant, for every (chain, point) at once."""

    def scale(step: Tensor, like: Tensor) -> Tensor:  # a per-point step broadcast over a site's value
        return step.reshape(1, -1, *([1] * (like.dim() - 2)))

    momentum = {k: torch.randn_like(v) for k, v in u.items()}
    grads, value0, log_q0, log_p0 = _grad(target, u, beta)
    kinetic0 = sum(m.pow(2).flatten(2).sum(-1) for m in momentum.values()) / 2
    new = dict(u)
    mom = {k: m + 0.5 * scale(eps, m) * grads[k] for k, m in momentum.items()}
    for step in range(leapfrog_steps):
        new = {k: v + scale(eps, v) * mom[k] for k, v in new.items()}
        grads, value, log_q, log_p = _grad(target, new, beta)
        last = step == leapfrog_steps - 1
        mom = {k: m + (0.5 if last else 1.0) * scale(eps, m) * grads[k] for k, m in mom.items()}
    kinetic = sum(m.pow(2).flatten(2).sum(-1) for m in mom.values()) / 2
    log_accept = (value - kinetic) - (value0 - kinetic0)
    log_accept = torch.where(torch.isfinite(log_accept), log_accept, torch.full_like(log_accept, -math.inf))
    accept = torch.rand_like(log_accept).log() < log_accept
    keep = {k: torch.where(accept.reshape(*accept.shape, *([1] * (v.dim() - 2))), new[k], v) for k, v in u.items()}
    log_q = torch.where(accept, log_q, log_q0)
    log_p = torch.where(accept, log_p, log_p0)
    rate = accept.to(eps.dtype).mean(0)
    return {k: v.detach() for k, v in keep.items()}, log_q, log_p, rate


@dataclass
class AISLogLikelihood(LogLikelihood):
    """:class:`~pyro_genmod.importance.LogLikelihood` from AIS, plus per point the Monte Carlo
    standard error of the estimate across chains and the mean HMC acceptance rate. ``elbo`` is
    the mean log-weight over the chains (a stochastic lower bound on log p(x))."""

    mc_stderr: Tensor | None = None
    acceptance: Tensor | None = None
    num_steps: int = 0
    leapfrog_steps: int = 0

    def summary(self) -> dict:
        """:meth:`LogLikelihood.summary` (``num_importance_samples`` is the chains per point) plus
        the AIS settings, the mean per-point Monte Carlo standard error and the acceptance rate."""
        return {
            **super().summary(),
            "method": "ais",
            "num_chains": self.num_samples,
            "num_steps": self.num_steps,
            "leapfrog_steps": self.leapfrog_steps,
            "mc_stderr_mean": float(self.mc_stderr.mean()) if self.mc_stderr is not None else None,
            "acceptance_mean": float(self.acceptance.mean()) if self.acceptance is not None else None,
        }


def ais_log_likelihood(
    model, guide, x: Tensor, num_chains: int = 16, num_steps: int = 100, *, leapfrog_steps: int = 5,
    step_size: float = 0.05, target_accept: float = 0.65, max_rows: int = 8192, seed: int | None = None,
    khat: bool = True,
) -> AISLogLikelihood:
    """Per-point AIS estimate of log p(x) from ``guide`` (the start of the annealing path) to p(z|x).

    Arguments:
        model, guide: a pair with continuous latents; the guide must score any point of its
            support (not planar, radial or Sylvester flows, not a point estimate): use
            ``create_guide("prior", model)`` to anneal from the prior.
        x: data points.
        num_chains: K, chains per point.
        num_steps: T, intermediate distributions (T = 1 is plain importance sampling).
        leapfrog_steps, step_size, target_accept: HMC: leapfrog steps per transition, the initial
            step size, and the acceptance rate each point's step size is adapted towards.
        max_rows: (point, chain) rows moved at once; points are processed in chunks.
        seed: seeds the draws (the global RNG is left untouched); ``None`` draws fresh noise.
        khat: PSIS k-hat of the AIS weights per point.
    """
    model = as_model(model, x)
    guide = as_guide(guide, model, x)
    for name, value in (("num_chains", num_chains), ("num_steps", num_steps), ("leapfrog_steps", leapfrog_steps),
                        ("max_rows", max_rows)):
        check_positive_int(name, value)
    if not (isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0):
        raise ConfigError(f"step_size must be a positive number, got {step_size!r}")
    if not (0 < target_accept < 1):
        raise ConfigError(f"target_accept must lie in (0, 1), got {target_accept!r}")
    if not getattr(model, "has_log_likelihood", True):
        raise ConfigError(
            f"model '{getattr(model, 'registry_name', type(model).__name__)}' has an improper prior, so "
            f"log p(x) is undefined and AIS has nothing to estimate; compare its reconstruction instead"
        )
    name = getattr(guide, "registry_name", type(guide).__name__)
    if getattr(guide, "is_point_estimate", False) or getattr(guide, "scores_own_samples_only", False):
        raise ConfigError(
            f"AIS scores the proposal at every point the chains visit, which guide '{name}' cannot do; "
            f"anneal from the prior instead: create_guide('prior', model)"
        )
    check_pair(model, guide)
    model.validate_data(x)
    device = next((p.device for p in model.parameters()), x.device)
    chunk = max(1, max_rows // num_chains)
    weights, rates = [], []
    with seeded(seed):
        for start in range(0, x.shape[0], chunk):
            result = ais_log_weights(
                model, guide, x[start : start + chunk].to(device), num_chains, num_steps,
                leapfrog_steps=leapfrog_steps, step_size=step_size, target_accept=target_accept,
            )
            weights.append(result.log_weights.detach().cpu())
            rates.append(result.acceptance.cpu())
    log_w = torch.cat(weights, dim=1)
    per_point = torch.logsumexp(log_w, dim=0) - math.log(num_chains)
    normalized = torch.exp(log_w - log_w.max(dim=0).values)
    mc_stderr = normalized.std(dim=0, unbiased=True) / normalized.mean(dim=0) / math.sqrt(num_chains)
    khats = psis_khat(log_w.T.double().numpy()) if khat else np.full(per_point.numel(), np.nan)
    return AISLogLikelihood(
        per_point=per_point, elbo=log_w.mean(dim=0), khat=khats, num_samples=num_chains,
        mc_stderr=mc_stderr, acceptance=torch.cat(rates), num_steps=num_steps, leapfrog_steps=leapfrog_steps,
    )


def _simulate(model, num: int) -> tuple[Tensor, dict[str, Tensor]]:
    """``num`` joint draws (x, z) ~ p(z) p(x|z): each z is an exact posterior draw for its x."""
    with torch.no_grad(), poutine.block():
        if getattr(model, "is_program", False):
            site = next(iter(model.observed_sites))
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            placeholder = torch.zeros(num, *model.data_shape, device=device)
            trace = poutine.trace(poutine.uncondition(model)).get_trace(placeholder)
            x = trace.nodes[site]["value"].reshape(num, *model.data_shape)
        else:
            trace = poutine.trace(model).get_trace(num_samples=num)
            x = trace.nodes["x"]["value"]
    return x, {s.name: trace.nodes[s.name]["value"] for s in model.latent_sites}


def _reverse_log_weights(model, guide, x, z_star, num_chains, num_steps, leapfrog_steps, step_size, target_accept):
    """Reverse AIS from exact posterior draws: log-weights whose mean of exp estimates 1 / p(x)."""
    target = _Target(model, guide, x, num_chains)
    betas = annealing_schedule(num_steps).tolist()
    u = {  # the continuous part of an exact posterior draw (its discrete part is summed out)
        n: target.transforms[n].inv(v.unsqueeze(0).expand(num_chains, *v.shape))
        for n, v in z_star.items() if n in target.transforms
    }
    log_w = torch.zeros(num_chains, x.shape[0], device=x.device)
    eps = torch.full((x.shape[0],), float(step_size), device=x.device)
    with _frozen(model, guide):
        with torch.no_grad():
            log_q, log_p, _ = target.densities(u)
        for t in range(len(betas) - 1, 0, -1):
            log_w = log_w + (betas[t - 1] - betas[t]) * (log_p - log_q).detach()
            if t == 1:
                break
            u, log_q, log_p, rate = _hmc(target, u, betas[t - 1], eps, leapfrog_steps)
            eps = eps * torch.exp(0.5 * (rate - target_accept)).clamp(0.5, 2.0)
    return log_w


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo on simulated points: a stochastic lower bound (forward AIS) and
    upper bound (reverse AIS from the exact posterior draw) on each point's log p(x)."""

    x: Tensor
    lower: Tensor
    upper: Tensor
    num_steps: int

    @property
    def gap(self) -> Tensor:
        """upper - lower per point: how far the AIS estimate can be from the truth."""
        return self.upper - self.lower


def bdmc(
    model, guide, num_points: int = 16, num_chains: int = 4, num_steps: int = 100, *, leapfrog_steps: int = 5,
    step_size: float = 0.05, target_accept: float = 0.65, seed: int | None = None,
) -> BDMCResult:
    """Sandwich log p(x) on ``num_points`` points simulated from ``model`` (Grosse et al., 2015):
    forward AIS gives a stochastic lower bound, reverse AIS started at the draw z that generated
    x (an exact posterior sample) a stochastic upper bound. A small gap validates the AIS
    settings (steps, chains) before they are trusted on real data.

    References:
        | Sandwiching the marginal likelihood using bidirectional Monte Carlo (Grosse,
          Ghahramani & Adams, 2015) https://arxiv.org/abs/1511.02543
    """
    check_positive_int("num_points", num_points)
    for name, value in (("num_chains", num_chains), ("num_steps", num_steps)):
        check_positive_int(name, value)
    with seeded(seed):
        x, z_star = _simulate(model, num_points)
    lower = ais_log_likelihood(
        model, guide, x, num_chains, num_steps, leapfrog_steps=leapfrog_steps, step_size=step_size,
        target_accept=target_accept, seed=None if seed is None else seed + 1, khat=False,
    )
    with seeded(None if seed is None else seed + 2):
        log_w = _reverse_log_weights(
            as_model(model, x), as_guide(guide, as_model(model, x), x), x, z_star, num_chains, num_steps,
            leapfrog_steps, step_size, target_accept,
        )
    upper = -(torch.logsumexp(log_w, dim=0) - math.log(num_chains))
    return BDMCResult(x=x, lower=lower.per_point, upper=upper.detach().cpu(), num_steps=num_steps)

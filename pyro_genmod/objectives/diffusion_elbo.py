"""The diffusion ELBO with one step per point and closed-form Gaussian KLs (Ho et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.errors import ConfigError

from .base import LossPair, Objective

__all__ = ["T_SAMPLINGS", "DiffusionELBO", "diffusion_terms", "gaussian_kl", "record_step_losses", "step_proposal"]


def gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, log_var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, exp(log_var_p))) elementwise (every argument broadcasts)."""
    return 0.5 * (log_var_p - var_q.log() + (var_q + (mean_q - mean_p).square()) * torch.exp(-log_var_p) - 1)


T_SAMPLINGS = ("importance", "uniform")
WARMUP = 10  # batches that must have drawn every step before the proposal leaves uniform
DECAY = 0.9  # the running mean of each step's squared loss forgets at this rate per batch
UNIFORM_SHARE = 0.02  # the proposal's uniform part: bounds every weight 1 / p(t) by (T - 1) / 0.02


def step_proposal(model) -> Tensor | None:
    r"""p(t) over the steps t = 2..T for the step term (Nichol & Dhariwal 2021, sec. 3.3):
    proportional to sqrt(E[L_{t-1}^2]), the running second moments the model keeps in its buffer
    ``step_loss_sq`` (so that checkpoints and resume carry them), mixed with a 2% uniform part.
    ``None`` (uniform) until every step has been drawn in :data:`WARMUP` training batches."""
    seen = getattr(model, "step_loss_seen", None)
    if seen is None or seen.numel() == 0 or bool((seen < WARMUP).any()):
        return None
    weights = model.step_loss_sq.clamp(min=0).sqrt()
    if not bool(torch.isfinite(weights).all()) or float(weights.sum()) <= 0:
        return None
    return (1 - UNIFORM_SHARE) * weights / weights.sum() + UNIFORM_SHARE / weights.numel()


def record_step_losses(model, t: Tensor, step_kl: Tensor) -> None:
    """Fold one batch's step losses L_{t-1} (at the drawn steps ``t``) into the model's running
    second moments, step by step (each step's batch mean of L^2, forgotten at :data:`DECAY`)."""
    with torch.no_grad():
        index = (t - 2).reshape(-1)
        sq = step_kl.detach().reshape(-1).to(model.step_loss_sq.dtype).square()
        ones = torch.ones_like(sq)
        total = torch.zeros_like(model.step_loss_sq).index_add_(0, index, sq)
        count = torch.zeros_like(model.step_loss_sq).index_add_(0, index, ones)
        drawn = count > 0
        mean = total[drawn] / count[drawn]
        first = model.step_loss_seen[drawn] == 0
        previous = model.step_loss_sq[drawn]
        model.step_loss_sq[drawn] = torch.where(first, mean, DECAY * previous + (1 - DECAY) * mean)
        model.step_loss_seen[drawn] += 1


def diffusion_terms(model, x: Tensor, proposal: Tensor | None = None) -> dict[str, Tensor]:
    r"""One draw of each part of the negative ELBO of a diffusion model, per point (shape ``(N,)``).

    With q the forward process and T steps,
    -ELBO = L_T + sum_{t=2}^T L_{t-1} + L_0, where L_T = KL(q(x_T|x) || N(0, I)) (closed form),
    L_{t-1} = E_q KL(q(x_{t-1}|x_t, x) || p(x_{t-1}|x_t)) (Gaussian KL in closed form at a draw
    x_t ~ q(x_t|x)), and L_0 = -E_q log p(x|x_1) (one draw x_1 ~ q(x_1|x)). The sum over t is
    estimated by one step t in 2..T per point drawn from ``proposal`` (probabilities over
    t = 2..T; ``None``: uniform) and weighted by 1 / p(t): unbiased for the full-chain ELBO
    whatever the proposal. The draws are stratified across the batch (systematic sampling of the
    proposal's quantiles), so a batch of N points draws each step about N p(t) times. Returns
    ``prior`` (L_T), ``decoder`` (L_0), ``step`` (L_{t-1} / p(t) at the drawn t; zero when
    T = 1), ``step_kl`` (L_{t-1}), ``t`` and ``total``.
    """
    T, events = model.num_steps, tuple(range(-len(model.data_shape), 0))
    mean_T, std_T = model.forward_marginal(x, T)
    prior = gaussian_kl(mean_T, std_T.square(), torch.zeros_like(mean_T), torch.zeros_like(mean_T)).sum(events)
    mean_1, std_1 = model.forward_marginal(x, 1)
    x_1 = mean_1 + std_1 * torch.randn_like(mean_1)
    decoder = -model.likelihood_log_prob({model.latent_sites[0].name: x_1}, x)
    if T == 1:
        zero = torch.zeros_like(decoder)
        return {"prior": prior, "decoder": decoder, "step": zero, "step_kl": zero,
                "t": torch.ones_like(decoder, dtype=torch.long), "total": prior + decoder}
    if proposal is None:
        offset = torch.randint(0, T - 1, (), device=x.device)  # stratified: t uniform per point, balanced per batch
        t = 2 + (offset + torch.arange(x.shape[0], device=x.device)) % (T - 1)
        weight = torch.full((), float(T - 1), device=x.device)
    else:
        n = x.shape[0]
        u = (torch.rand((), device=x.device) + torch.arange(n, device=x.device)) / n
        u = u[torch.randperm(n, device=x.device)]  # which point gets which quantile: at random
        cdf = torch.cumsum(proposal.to(x.device), 0)
        index = torch.searchsorted(cdf, u.to(cdf.dtype)).clamp(max=T - 2)
        t, weight = 2 + index, 1 / proposal.to(x.device)[index]
    mean_t, std_t = model.forward_marginal(x, t)
    x_t = mean_t + std_t * torch.randn_like(mean_t)
    mean_q, var_q = model.forward_posterior(x_t, x, t)
    mean_p, log_var_p = model.reverse_moments(x_t, t)
    step_kl = gaussian_kl(mean_q, var_q, mean_p, log_var_p).sum(events)
    step = weight.to(step_kl.dtype) * step_kl
    return {"prior": prior, "decoder": decoder, "step": step, "step_kl": step_kl, "t": t, "total": prior + decoder + step}


@register_objective("diffusion_elbo")
class DiffusionELBO(Objective):
    """The full-chain ELBO of a diffusion model with its forward-process guide, estimated with one
    step t per point and the Gaussian KLs in closed form (Ho et al. 2020, eq. 5; Kingma et al.
    2021): an unbiased estimate of the same bound ``trace_elbo`` estimates by sampling the whole
    chain, at the cost of two network evaluations per point instead of T. The step is drawn by
    importance sampling (``t_sampling="importance"``, the default; Nichol & Dhariwal 2021): with
    p(t) proportional to the root mean square of each step's loss over recent training batches
    (see :func:`step_proposal`), which cuts the variance that a uniform t pays because the step
    losses differ by orders of magnitude between steps; ``"uniform"`` draws t uniformly
    (stratified across the batch). ``num_particles`` draws per point are averaged. The default
    objective of model ``diffusion``; it needs guide ``forward_process`` (the bound it computes
    is that guide's). Options go in the name: ``"diffusion_elbo(t_sampling=uniform)"``.

    References:
        | Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, 2020)
          https://arxiv.org/abs/2006.11239
        | Variational Diffusion Models (Kingma, Salimans, Poole & Ho, 2021)
          https://arxiv.org/abs/2107.00630
        | Improved Denoising Diffusion Probabilistic Models (Nichol & Dhariwal, 2021)
          https://arxiv.org/abs/2102.09672
    """

    def __init__(self, num_particles: int = 1, t_sampling: str = "importance"):
        super().__init__(num_particles)
        if t_sampling not in T_SAMPLINGS:
            raise ConfigError(f"objective 'diffusion_elbo': unknown t_sampling {t_sampling!r}; choose one of {list(T_SAMPLINGS)}")
        self.t_sampling = t_sampling

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        if not callable(getattr(model, "forward_posterior", None)):
            name = getattr(model, "registry_name", type(model).__name__)
            raise ConfigError(
                f"objective 'diffusion_elbo' needs a diffusion model, got model '{name}'; use trace_elbo"
            )
        if getattr(guide, "registry_name", None) != "forward_process":
            name = getattr(guide, "registry_name", type(guide).__name__)
            raise ConfigError(
                f"objective 'diffusion_elbo' is the bound of the forward-process guide, got guide '{name}'; "
                f"use guide 'forward_process', or objective 'trace_elbo' with guide '{name}'"
            )
        k = self.num_particles
        batch = x if k == 1 else x.expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])
        importance = self.t_sampling == "importance"
        terms = diffusion_terms(model, batch, step_proposal(model) if importance else None)
        if importance and torch.is_grad_enabled() and model.num_steps > 1:  # training steps only
            record_step_losses(model, terms["t"], terms["step_kl"])
        loss = terms["total"].sum() / k
        return loss, float(loss.detach())

"""beta-VAE, KL warm-up and free bits: reweighting the latent terms of any model/guide pair.

The ELBO of any pair splits into the observed sites' log-likelihood and, for every latent
site, log p(z) - log q(z|x), whose expectation is minus that site's KL term. Weighting the
latent sites by beta in both model and guide gives E[log p(x|z)] - beta KL(q || p), whatever
the model, guide or Pyro estimator. :class:`ScaleLatents` is that weighting, a Pyro messenger
like ``poutine.scale`` that leaves observed sites alone; :class:`KLSchedule` chooses the
weight per step.
"""

from __future__ import annotations

import math

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from .densities import latent_log_ratios
from .errors import ConfigError

__all__ = ["ScaleLatents", "KLSchedule", "latent_kl"]


def _is_latent(msg: dict) -> bool:
    return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)


class ScaleLatents(Messenger):
    """Multiply the log-density of every unobserved sample site by ``scale``.

    Used as a context around an ELBO call, it applies to the model (where latent sites are
    replayed from the guide, so unobserved) and to the guide alike; ``"x"`` and other observed
    sites keep weight 1. Unlike ``poutine.scale`` it accepts 0 (to switch a KL term off).

    Arguments:
        scale: the weight for every latent site.
        per_site: weights for some sites by name, overriding ``scale``.
    """

    def __init__(self, scale: float = 1.0, per_site: dict[str, float] | None = None):
        super().__init__()
        if not (math.isfinite(scale) and scale >= 0):
            raise ConfigError(f"the latent-site weight must be finite and non-negative, got {scale}")
        self.scale = float(scale)
        self.per_site = dict(per_site or {})

    def _process_message(self, msg: dict) -> None:
        if _is_latent(msg):
            msg["scale"] = self.per_site.get(msg["name"], self.scale) * msg["scale"]


def latent_kl(model, guide, x: Tensor) -> dict[str, float]:
    """Single-sample estimate of each latent site's KL term, averaged over the points of ``x``.

    For site s: mean over points of log q(z_s | ...) - log p(z_s | parents), z ~ q (no gradients),
    from the log-density engine (:func:`~pyro_genmod.densities.latent_log_ratios`).
    """
    return {name: float(ratio.sum()) / x.shape[0] for name, ratio in latent_log_ratios(model, guide, x).items()}


class KLSchedule:
    r"""The weight of the KL terms per training step: beta-VAE, linear warm-up, free bits.

    The objective at step t is E[log p(x|z)] - beta_t sum_s max(lambda, KL_s), with
    beta_t = beta min(1, t / warmup_steps) (beta from step ``warmup_steps`` on) and lambda the
    free bits per latent site (each site is one group). Free bits are applied per minibatch:
    when a site's KL estimate (:func:`latent_kl`, averaged over the batch) is below lambda,
    that site gets weight 0 for the step, which is the gradient of max(lambda, KL_s), and
    lambda is added to the loss value.

    References:
        | beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework
          (Higgins et al., 2017) https://openreview.net/forum?id=Sy2fzU9gl
        | Ladder Variational Autoencoders (Sonderby et al., 2016) https://arxiv.org/abs/1602.02282
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
          https://arxiv.org/abs/1606.04934

    Arguments:
        beta: the final KL weight (1 is the ELBO).
        warmup_steps: steps over which the weight rises linearly from 0 to ``beta``.
        free_bits: lambda, nats per latent site and data point (0 turns it off).
    """

    def __init__(self, beta: float = 1.0, warmup_steps: int = 0, free_bits: float = 0.0):
        for name, value in (("beta", beta), ("free_bits", free_bits)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite non-negative number, got {value!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"the KL warm-up length must be a non-negative integer, got {warmup_steps!r}")
        self.beta, self.warmup_steps, self.free_bits = float(beta), warmup_steps, float(free_bits)

    @classmethod
    def per_epoch(cls, beta: float, warmup_epochs: int, free_bits: float, steps_per_epoch: int) -> KLSchedule:
        """A schedule whose warm-up lasts ``warmup_epochs`` epochs of ``steps_per_epoch`` steps."""
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ConfigError(f"kl_warmup must be a non-negative number of epochs, got {warmup_epochs!r}")
        return cls(beta, warmup_epochs * steps_per_epoch, free_bits)

    @property
    def is_identity(self) -> bool:
        """True when every step is the plain objective."""
        return self.beta == 1.0 and self.warmup_steps == 0 and self.free_bits == 0.0

    def beta_at(self, step: int) -> float:
        """beta_t for the 0-based global step ``step``."""
        if self.warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, step / self.warmup_steps)

    def __call__(self, objective, model, guide, x: Tensor, step: int) -> tuple[Tensor, float]:
        """``objective(model, guide, x)`` with the latent terms weighted for ``step``."""
        if self.is_identity:
            return objective(model, guide, x)
        if not hasattr(objective, "elbo"):
            name = getattr(objective, "name", type(objective).__name__)
            raise ConfigError(
                f"beta, KL warm-up and free bits reweight the sites of Pyro's ELBO estimators; "
                f"objective '{name}' does not use site weights, so use trace_elbo, "
                f"tracemeanfield_elbo, traceenum_elbo or tracegraph_elbo"
            )
        # A fast path that computes log q outside Pyro's handler stack would miss the weights.
        if getattr(objective, "use_fast", False):
            objective.use_fast = False
        beta = self.beta_at(step)
        per_site, offset = {}, 0.0
        if self.free_bits > 0:
            for name, kl in latent_kl(model, guide, x).items():
                if kl < self.free_bits:
                    per_site[name] = 0.0
                    offset += beta * self.free_bits * x.shape[0]
        with ScaleLatents(beta, per_site):
            differentiable, value = objective(model, guide, x)
        return differentiable + offset, value + offset

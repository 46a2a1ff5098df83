"""beta-TCVAE: the ELBO's KL term split into index-code MI, total correlation and dimension-wise KL."""

from __future__ import annotations

import math

import torch
from pyro.distributions import Independent as PyroIndependent
from torch import Tensor
from torch.distributions import Independent, LowRankMultivariateNormal, MultivariateNormal, Normal

from pyro_genmod._registry import register_objective
from pyro_genmod.errors import ConfigError
from pyro_genmod.markers import is_contract_default

from ._aggregate import latent_model, score_model
from .base import LossPair, Objective, check_reparameterizable

__all__ = ["BetaTCVAE", "decomposition"]

_GAUSSIANS = (MultivariateNormal, LowRankMultivariateNormal)


def _marginals(q) -> tuple[Tensor, Tensor] | None:
    """Location and scale of each coordinate's marginal q(z_d|x), shape ``(N, d)``, for a
    diagonal or full-covariance Gaussian over one vector; ``None`` for any other family."""
    while isinstance(q, (Independent, PyroIndependent)):
        q = q.base_dist
    if isinstance(q, Normal) and q.loc.dim() == 2:
        return q.loc, q.scale
    if isinstance(q, _GAUSSIANS):
        return q.loc, q.variance.sqrt()
    return None


def decomposition(model, guide, x: Tensor, num_particles: int = 1, dataset_size: int | None = None,
                  name: str = "beta_tcvae") -> dict[str, Tensor]:
    r"""The terms of the beta-TCVAE objective per draw, each of shape ``(K, N)``.

    With z_i ~ q(z|x_i) for the M points of the batch and N = ``dataset_size``, the
    minibatch-weighted sampling estimates are
    log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log(N M), and the same per coordinate for
    log q(z_id). Then ``mi`` = log q(z|x) - log q(z), ``tc`` = log q(z) - sum_d log q(z_d),
    ``dwkl`` = sum_d log q(z_d) - log p(z), whose sum is log q(z|x) - log p(z), the ELBO's KL
    term on the same draw, whatever N. ``dataset_size=None`` takes the batch for the data
    set: log q(z_i) is then the exact log-density of the batch's mixture (1/M) sum_j q(z|x_j).
    Also returned: ``log_likelihood`` = log p(x|z), ``log_q``, ``log_prior``.
    """
    inner = latent_model(model, name)
    check_reparameterizable(inner, name)
    guide_name = getattr(guide, "registry_name", type(guide).__name__)
    posterior = getattr(guide, "posterior", None)
    if not callable(posterior) or not is_contract_default(type(guide).forward):
        raise ConfigError(
            f"objective '{name}' scores every draw under every point's q(z|x), so it needs a guide "
            f"whose sites are independent given x (mean_field, full_rank, low_rank); guide "
            f"'{guide_name}' samples its sites in its own program"
        )
    m = x.shape[0]
    qs = posterior(x)
    values, joint, marginal = {}, 0.0, []
    for site in inner.latent_sites:
        q = qs[site.name]
        moments = _marginals(q)
        if moments is None or q.batch_shape != (m,):
            raise ConfigError(
                f"objective '{name}' needs the one-dimensional marginals of q(z|x), which guide "
                f"'{guide_name}' does not give for site '{site.name}' ({type(q).__name__}); use "
                f"mean_field, full_rank or low_rank"
            )
        z = q.rsample((num_particles,))  # (K, M, d)
        values[site.name] = z
        pairs = z.unsqueeze(-2)  # (K, M, 1, d): draw i against every point j
        joint = joint + q.log_prob(pairs)  # (K, M, M)
        marginal.append(Normal(*moments).log_prob(pairs))  # (K, M, M, d)
    marginal = torch.cat(marginal, dim=-1)
    log_q = joint.diagonal(dim1=-2, dim2=-1)
    log_prior, log_likelihood = score_model(model, x, values, num_particles)
    log_norm = math.log(m * (dataset_size or 1))
    log_qz = torch.logsumexp(joint, dim=-1) - log_norm
    log_qz_product = (torch.logsumexp(marginal, dim=-2) - log_norm).sum(-1)
    return {
        "mi": log_q - log_qz, "tc": log_qz - log_qz_product, "dwkl": log_qz_product - log_prior,
        "log_likelihood": log_likelihood, "log_q": log_q, "log_prior": log_prior,
    }


@register_objective("beta_tcvae")
class BetaTCVAE(Objective):
    r"""beta-TCVAE: -E[log p(x|z)] + alpha MI + beta TC + gamma DWKL (Chen et al., 2018).

    The KL term of the ELBO, averaged over the data, is the index-code mutual information
    I(x; z), plus the total correlation KL(q(z) || prod_d q(z_d)), plus the dimension-wise
    KL(prod_d q(z_d) || p(z)); beta-TCVAE weights them apart (see :func:`decomposition` for
    the minibatch-weighted sampling estimates). With alpha = beta = gamma = 1 it is the ELBO,
    draw for draw. The loss value is the weighted objective (summed over the batch), not a
    bound on log p(x) unless all three weights are 1.

    Pairs: the guide's q(z|x) must be a Gaussian per site whose marginals are known
    (``mean_field``, ``full_rank``, ``low_rank``) and every latent site continuous; the sites
    are joined into one vector, and log p(z) is the model's prior (learned priors such as
    ``vamp`` and ``flow_prior`` included).

    References:
        | Isolating Sources of Disentanglement in Variational Autoencoders (Chen, Li, Grosse &
          Duvenaud, 2018) https://arxiv.org/abs/1802.04942

    Arguments:
        num_particles: draws per point (the terms are averaged over them).
        alpha: weight of the index-code mutual information.
        beta: weight of the total correlation.
        gamma: weight of the dimension-wise KL.
        dataset_size: N, the number of training points, for the minibatch-weighted sampling
            estimate; ``None`` treats the minibatch as the data set.
    """

    def __init__(self, num_particles: int = 1, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 dataset_size: int | None = None):
        super().__init__(num_particles)
        for key, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"objective 'beta_tcvae' option '{key}' must be finite and >= 0, got {value}")
        if dataset_size is not None and dataset_size < 1:
            raise ConfigError(f"objective 'beta_tcvae' option 'dataset_size' must be positive, got {dataset_size}")
        self.alpha, self.beta, self.gamma, self.dataset_size = float(alpha), float(beta), float(gamma), dataset_size

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        terms = decomposition(model, guide, x, self.num_particles, self.dataset_size, self.name)
        per_draw = (
            -terms["log_likelihood"] + self.alpha * terms["mi"] + self.beta * terms["tc"]
            + self.gamma * terms["dwkl"]
        )
        loss = per_draw.sum() / self.num_particles
        return loss, float(loss.detach())

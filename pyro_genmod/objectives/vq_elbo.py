"""The ELBO of a VQ-VAE pair with the straight-through gradient for its discrete codes."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_genmod._registry import register_objective
from pyro_genmod.errors import ConfigError

from .base import LossPair, Objective, latent_model

__all__ = ["VQELBO"]

_MODEL_HOOKS = ("codebook", "prior_logits", "log_prob_from_embeddings")
_GUIDE_HOOKS = ("encoder_vectors", "logits")


@register_objective("vq_elbo")
class VQELBO(Objective):
    r"""ELBO = E_q[log p(x|c)] - KL(q(c|x) || p(c)) for the ``vq_vae`` model and ``vq`` guide.

    The KL term is exact (a sum over the K codes at each position, both factors independent
    across positions); the reconstruction term is averaged over ``num_particles`` draws c ~ q.
    The loss value is therefore an unbiased estimate of the negative ELBO, the number every
    other objective reports. Its gradient is not: the decoder sees the drawn embeddings e_c, and
    the encoder gets the straight-through estimate of van den Oord et al. (the decoder's
    gradient at e_c passed to the encoder output e(x) unchanged), since no gradient exists
    through a discrete draw. The codebook gets the exact gradient at e_c and the KL term's;
    the KL term also pulls e(x) towards the codebook, which plays the role of VQ-VAE's codebook
    and commitment losses. ``tracegraph_elbo`` gives unbiased (score-function) gradients for the
    same pair, at a higher variance.

    References:
        | Neural Discrete Representation Learning (van den Oord, Vinyals & Kavukcuoglu, 2017)
          https://arxiv.org/abs/1711.00937
        | Estimating or Propagating Gradients Through Stochastic Neurons for Conditional
          Computation (Bengio, Léonard & Courville, 2013) https://arxiv.org/abs/1308.3432
    """

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        inner = latent_model(model, self.name)
        if not all(hasattr(inner, h) for h in _MODEL_HOOKS) or not all(hasattr(guide, h) for h in _GUIDE_HOOKS):
            raise ConfigError(
                f"objective '{self.name}' trains the 'vq_vae' model with the 'vq' guide only; "
                f"use trace_elbo (or tracegraph_elbo for discrete latents) for other pairs"
            )
        e = guide.encoder_vectors(x)  # (N, P, D)
        log_q = torch.log_softmax(guide.logits(e), dim=-1)  # (N, P, K)
        log_p = torch.log_softmax(inner.prior_logits, dim=-1)  # (P, K)
        kl = (log_q.exp() * (log_q - log_p)).sum((-2, -1))  # (N,)
        with torch.no_grad():
            codes = torch.distributions.Categorical(logits=log_q).sample((self.num_particles,))  # (S, N, P)
        chosen = inner.codebook[codes]  # (S, N, P, D)
        straight_through = chosen + e - e.detach()  # the value of e_c, the gradient of e(x) too
        reconstruction = inner.log_prob_from_embeddings(straight_through.flatten(-2), x).mean(0)  # (N,)
        loss = (kl - reconstruction).sum()
        return loss, float(loss.detach())

"""VQ-VAE as a latent-variable model: discrete codes, a learned categorical prior, a decoder."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_genmod._registry import register_model
from pyro_genmod.errors import ConfigError
from pyro_genmod.latents import LatentSite
from pyro_genmod.likelihoods import create_likelihood

from .base import GenerativeModel
from .vae import make_decoder

__all__ = ["VQVAE"]

MAX_ENUMERATED = 1 << 16  # exact_log_likelihood's limit on num_codes ** num_positions


@register_model("vq_vae")
class VQVAE(GenerativeModel):
    r"""VQ-VAE with a learned categorical prior: c_p ~ Cat(pi_p), x ~ p(x | decoder(e_{c_1}, ..., e_{c_P})).

    The latent site ``codes`` holds P positions, each one of K codebook entries e_1..e_K in R^D;
    the decoder reads the P chosen embeddings side by side (P * D inputs). Unlike the original
    VQ-VAE, whose prior is fitted afterwards (a PixelCNN) and which has no log p(x) of its own,
    the prior here is part of the model and learned with it, so log p(x) = log sum_c p(c) p(x|c)
    is defined and the zoo's importance sampler scores it like any other model. The prior is
    independent across positions, p(c) = prod_p Cat(c_p; softmax(logits_p)), one learned
    distribution per position (an autoregressive prior over positions would be sharper; this one
    keeps the model a plain Pyro program whose prior is one site).

    Its guide is ``vq`` (q(c_p|x) = softmax_k(-||e_p(x) - e_k||^2 / T), whose mode is VQ's nearest
    codebook entry), trained by the ``vq_elbo`` objective (the ELBO with a straight-through
    gradient for the encoder; the model's default). ``tracegraph_elbo`` (score-function gradient)
    also trains it; the ``prior`` guide scores it. With K^P small, :meth:`exact_log_likelihood`
    sums p(x, c) over every configuration, which checks the importance sampler.

    References:
        | Neural Discrete Representation Learning (van den Oord, Vinyals & Kavukcuoglu, 2017)
          https://arxiv.org/abs/1711.00937

    Arguments:
        data_shape: shape of one data point.
        num_positions: P, the number of code positions.
        num_codes: K, the codebook size.
        code_dim: D, the dimension of one codebook entry.
        hidden: MLP decoder hidden-layer widths.
        likelihood, scale, num_levels: observation model, as for ``vae``.
        activation: decoder activation.
        decoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only), from the P * D
            concatenated embeddings.
        channels: feature maps of the conv and ResNet decoders.
    """

    default_guide = "vq"
    default_objective = "vq_elbo"

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_positions: int = 16,
        num_codes: int = 16,
        code_dim: int = 4,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        scale: float | None = None,
        num_levels: int | None = None,
        activation: str = "tanh",
        decoder: str = "mlp",
        channels: int = 32,
    ):
        super().__init__(data_shape)
        for name, value, low in (("num_positions", num_positions, 1), ("num_codes", num_codes, 2),
                                 ("code_dim", code_dim, 1)):
            if int(value) < low:
                raise ConfigError(f"model 'vq_vae' option '{name}' must be an integer >= {low}, got {value}")
        self.num_positions, self.num_codes, self.code_dim = int(num_positions), int(num_codes), int(code_dim)
        support = constraints.independent(constraints.integer_interval(0, self.num_codes - 1), 1)
        self.latent_sites = (LatentSite("codes", (self.num_positions,), support, discrete=True),)
        self.observation = create_likelihood(likelihood, self.data_shape, scale=scale, num_levels=num_levels)
        self.decoder = make_decoder(
            decoder, self.num_positions * self.code_dim, self.observation, tuple(hidden), activation, channels
        )
        self.codebook = nn.Parameter(torch.randn(self.num_codes, self.code_dim))
        self.prior_logits = nn.Parameter(torch.zeros(self.num_positions, self.num_codes))

    def embed(self, codes: Tensor) -> Tensor:
        """The decoder's input for ``codes`` of shape ``(..., P)``: the P embeddings side by side,
        shape ``(..., P * D)``."""
        return self.codebook[codes].flatten(-2)

    def prior_distributions(self) -> dict[str, dist.Distribution]:
        return {"codes": dist.Categorical(logits=self.prior_logits).to_event(1)}

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        return self.observation(self.decoder(self.embed(latents["codes"])))

    def likelihood_log_prob(self, latents: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.observation.log_prob(self.decoder(self.embed(latents["codes"])), x)

    def log_prob_from_embeddings(self, embeddings: Tensor, x: Tensor) -> Tensor:
        """log p(x | decoder input ``embeddings``), shape ``embeddings.shape[:-1]``: the
        reconstruction term the straight-through objective differentiates."""
        return self.observation.log_prob(self.decoder(embeddings), x)

    @torch.no_grad()
    def exact_log_likelihood(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """Exact log p(x) = logsumexp_c [log p(c) + log p(x|c)] over all K^P code configurations,
        per point, shape ``(N,)`` (float64 sums). Raises :class:`ConfigError` when K^P exceeds
        65,536."""
        self.validate_data(x)
        total = self.num_codes**self.num_positions
        if total > MAX_ENUMERATED:
            raise ConfigError(
                f"exact_log_likelihood enumerates num_codes ** num_positions = {total} configurations, more "
                f"than {MAX_ENUMERATED}; use pg.log_likelihood (importance sampling)"
            )
        log_prior = torch.log_softmax(self.prior_logits.double(), dim=-1)
        configs = torch.tensor(list(itertools.product(range(self.num_codes), repeat=self.num_positions)))
        result = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        for chunk in configs.to(x.device).split(batch_size):
            log_p_c = log_prior[torch.arange(self.num_positions, device=x.device), chunk].sum(-1)  # (C,)
            log_p_x = self.likelihood_log_prob({"codes": chunk.unsqueeze(1)}, x).double()  # (C, N)
            result = torch.logaddexp(result, torch.logsumexp(log_p_c.unsqueeze(-1) + log_p_x, dim=0))
        return result.to(self.codebook.dtype)

"""Vector-quantization guide: q(c_p|x) = softmax over codebook distances, for the ``vq_vae`` model."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_genmod._registry import register_guide
from pyro_genmod.errors import ConfigError
from pyro_genmod.nn import make_encoder

from .base import Guide

__all__ = ["VQGuide"]


@register_guide("vq")
class VQGuide(Guide):
    r"""q(c|x) = prod_p Cat(c_p; softmax_k(-||e_p(x) - e_k||^2 / T)), the codebook's soft assignment.

    An encoder maps x to P vectors e_p(x) in R^D; each position's code is drawn from a softmax
    over the negative squared distances to the model's codebook entries e_1..e_K (shared with
    the model, not copied). Its mode is VQ-VAE's nearest-neighbour quantization; T -> 0 gives
    that deterministic encoder back, which is not a density and so no importance proposal. The
    codes are sampled, never enumerated (K^P configurations).

    References:
        | Neural Discrete Representation Learning (van den Oord, Vinyals & Kavukcuoglu, 2017)
          https://arxiv.org/abs/1711.00937
        | Theory and Experiments on Vector Quantized Autoencoders (Roy et al., 2018)
          https://arxiv.org/abs/1805.11063
        | Weighted Average Importance Sampling and Defensive Mixture Distributions (Hesterberg, 1995)
          https://doi.org/10.1080/00401706.1995.10484303

    Arguments:
        model: a model with a codebook (``vq_vae``).
        hidden: encoder hidden-layer widths (``encoder="mlp"``).
        activation: encoder activation (``encoder="mlp"``).
        encoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet encoders.
        temperature: T > 0, the softmax temperature on squared distances.
        prior_weight: alpha in [0, 1); with alpha > 0 each position's proposal is the defensive
            mixture (1 - alpha) q(c_p|x) + alpha p(c_p) with the model's prior (Hesterberg), so an
            importance weight's prior-to-proposal ratio is at most 1/alpha per position. The
            straight-through ``vq_elbo`` trains the unmixed q (it reads :meth:`logits`); sampling,
            scoring and :func:`~pyro_genmod.tasks.encode` use the mixture. Default 0 (plain q).
    """

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        if not all(hasattr(model, name) for name in ("codebook", "num_positions", "code_dim")):
            return "this family quantizes against the model's codebook; only 'vq_vae' has one"
        return None

    def __init__(
        self,
        model,
        hidden=(200, 200),
        activation: str = "tanh",
        encoder: str = "mlp",
        channels: int = 32,
        temperature: float = 1.0,
        prior_weight: float = 0.0,
    ):
        super().__init__(model)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"guide 'vq' option 'temperature' must be a positive number, got {temperature}")
        self.temperature = float(temperature)
        if not (isinstance(prior_weight, (int, float)) and 0.0 <= prior_weight < 1.0):
            raise ConfigError(f"guide 'vq' option 'prior_weight' must be a number in [0, 1), got {prior_weight} "
                              "(the guide 'prior' is alpha = 1)")
        self.prior_weight = float(prior_weight)
        self.num_positions, self.code_dim = model.num_positions, model.code_dim
        # Held without registering it as a submodule: the codebook is the model's parameter.
        object.__setattr__(self, "_model", model)
        self.encoder = make_encoder(encoder, self.data_shape, self.num_positions * self.code_dim, hidden,
                                    activation, channels)

    def encoder_vectors(self, x: Tensor) -> Tensor:
        """e(x), the encoder's P vectors, shape ``(N, P, D)``."""
        return self.encoder(x.reshape(x.shape[0], -1)).reshape(x.shape[0], self.num_positions, self.code_dim)

    def logits(self, e: Tensor) -> Tensor:
        """-||e_p - e_k||^2 / T for encoder vectors ``e`` of shape ``(..., P, D)``: shape ``(..., P, K)``."""
        codebook = self._model.codebook
        distances = (e.unsqueeze(-2) - codebook).pow(2).sum(-1)
        return -distances / self.temperature

    def posterior(self, x: Tensor) -> dict[str, dist.Distribution]:
        logits = self.logits(self.encoder_vectors(x))
        if self.prior_weight > 0:  # log((1 - a) q + a p), per position and code
            log_q = torch.log_softmax(logits, -1) + math.log1p(-self.prior_weight)
            log_p = torch.log_softmax(self._model.prior_logits, -1) + math.log(self.prior_weight)
            logits = torch.logaddexp(log_q, log_p)
        return {"codes": dist.Categorical(logits=logits).to_event(1)}

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        # Sampled, not marked for enumeration: K^P configurations are too many to sum.
        with pyro.plate(self.data_plate, x.shape[0]):
            return {"codes": pyro.sample("codes", self.posterior(x)["codes"])}

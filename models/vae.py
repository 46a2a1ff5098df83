"""Variational autoencoder with an MLP decoder."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_genmod._registry import register_model
from pyro_genmod.latents import LatentSite
from pyro_genmod.likelihoods import create_likelihood
from pyro_genmod.nn import mlp

from .base import GenerativeModel

__all__ = ["VAE"]


@register_model("vae")
class VAE(GenerativeModel):
    """Variational autoencoder: z ~ N(0, I), x ~ p(x | MLP decoder(z)).

    References:
        | Auto-Encoding Variational Bayes (Kingma & Welling, 2014) https://arxiv.org/abs/1312.6114

    Arguments:
        data_shape: shape of one data point.
        latent_dim: dimension of z.
        hidden: decoder hidden-layer widths (Burda et al.'s 200-200 by default).
        likelihood: ``"bernoulli"`` for binary data, ``"gaussian"`` for real-valued data.
        scale: fixed standard deviation for the Gaussian likelihood; ``None`` learns one per
            dimension.
        activation: ``"tanh"`` (default), ``"relu"``, ``"softplus"`` or ``"elu"``.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int = 8,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        scale: float | None = None,
        activation: str = "tanh",
    ):
        super().__init__(data_shape)
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.latent_sites = (LatentSite("z", (self.latent_dim,)),)
        options = {"scale": scale} if likelihood == "gaussian" else {}
        if scale is not None and likelihood != "gaussian":
            raise ValueError("scale applies only to likelihood='gaussian'")
        self.observation = create_likelihood(likelihood, self.data_shape, **options)
        self.decoder = mlp(self.latent_dim, hidden, self.observation.size, activation)
        self.register_buffer("_zero", torch.zeros(()))

    def prior(self) -> dict[str, Tensor]:
        loc = self._zero.expand(self.latent_dim)
        z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        return {"z": z}

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        return self.observation(self.decoder(latents["z"]))

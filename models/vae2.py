"""VAE with two stochastic layers (Burda et al.'s architecture): z2 -> z1 -> x."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_genmod._registry import register_model
from pyro_genmod.latents import LatentSite
from pyro_genmod.likelihoods import create_likelihood
from pyro_genmod.nn import mlp
from pyro_genmod.priors import make_prior

from .base import GenerativeModel
from .vae import make_decoder

__all__ = ["TwoLayerVAE"]


@register_model("vae2")
class TwoLayerVAE(GenerativeModel):
    r"""Two stochastic layers: z2 ~ p(z2), z1 | z2 ~ N(mu(z2), diag sigma(z2)^2), x ~ p(x | z1).

    With the defaults this is the two-layer model of Burda et al.: latents of 100 and 50, the
    networks between x and z1 with two hidden layers of 200 units, between z1 and z2 with two
    of 100 (tanh). Latent sites are declared from the data upwards, ``("z1", "z2")``; the prior
    samples z2 first. The matching inference network, q(z1|x) q(z2|z1), is the ``bottom_up``
    guide; any guide covering two continuous sites (``mean_field``, ``iaf``, ...) also fits.
    p(z2) is N(0, I), or with ``prior="vamp"`` the VampPrior on the top layer (Tomczak &
    Welling's hierarchical VampPrior VAE puts it there too).

    References:
        | Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015)
          https://arxiv.org/abs/1509.00519

    Arguments:
        data_shape: shape of one data point.
        latent_dims: sizes of z1 (bottom) and z2 (top).
        hidden: hidden width of the x <-> z1 networks and of the z1 <-> z2 networks; each
            network has two hidden layers of that width.
        likelihood, scale, num_levels: observation model, as for ``vae``.
        activation: network activation.
        decoder: ``"mlp"``, ``"conv"`` or ``"resnet"`` for the z1 -> x network.
        channels: feature maps of the conv and ResNet decoders.
        prior: ``"standard"`` (N(0, I), default) or ``"vamp"`` for p(z2)
            (:mod:`pyro_genmod.priors`).
        num_pseudo: K, the VampPrior's number of pseudo-inputs (default 500; ``prior="vamp"`` only).
        encoder_hidden: hidden widths of the VampPrior's pseudo-input encoder (default 200-200;
            ``prior="vamp"`` only).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dims: Sequence[int] = (100, 50),
        hidden: Sequence[int] = (200, 100),
        likelihood: str = "bernoulli",
        scale: float | None = None,
        num_levels: int | None = None,
        activation: str = "tanh",
        decoder: str = "mlp",
        channels: int = 32,
        prior: str = "standard",
        num_pseudo: int | None = None,
        encoder_hidden: Sequence[int] | None = None,
    ):
        super().__init__(data_shape)
        if len(latent_dims) != 2 or any(int(d) <= 0 for d in latent_dims):
            raise ValueError(f"latent_dims must be two positive sizes (z1, z2), got {list(latent_dims)}")
        if len(hidden) != 2 or any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden must be two positive widths (x<->z1, z1<->z2), got {list(hidden)}")
        self.latent_dims = (int(latent_dims[0]), int(latent_dims[1]))
        wide, narrow = int(hidden[0]), int(hidden[1])
        self.latent_sites = (LatentSite("z1", (self.latent_dims[0],)), LatentSite("z2", (self.latent_dims[1],)))
        self.observation = create_likelihood(likelihood, self.data_shape, scale=scale, num_levels=num_levels)
        self.top = mlp(self.latent_dims[1], (narrow, narrow), 2 * self.latent_dims[0], activation)
        self.decoder = make_decoder(decoder, self.latent_dims[0], self.observation, (wide, wide), activation, channels)
        self.latent_prior = make_prior(
            prior, self.data_shape, self.latent_dims[1], num_pseudo, encoder_hidden, activation, likelihood
        )
        self.register_buffer("_zero", torch.zeros(()))

    def prior(self) -> dict[str, Tensor]:
        z2 = pyro.sample("z2", self.latent_prior.distribution(like=self._zero))
        loc, raw_scale = self.top(z2).chunk(2, dim=-1)
        z1 = pyro.sample("z1", dist.Normal(loc, F.softplus(raw_scale) + 1e-4).to_event(1))
        return {"z1": z1, "z2": z2}

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        return self.observation(self.decoder(latents["z1"]))

    def likelihood_log_prob(self, latents: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.observation.log_prob(self.decoder(latents["z1"]), x)

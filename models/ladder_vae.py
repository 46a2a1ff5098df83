"""Ladder VAE's generative model: a chain of L >= 3 Gaussian latent layers z_L -> ... -> z_1 -> x."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_genmod._registry import register_model
from pyro_genmod.errors import ConfigError
from pyro_genmod.latents import LatentSite
from pyro_genmod.likelihoods import create_likelihood
from pyro_genmod.nn import mlp

from .base import GenerativeModel
from .vae import make_decoder

__all__ = ["LadderVAE"]


@register_model("ladder_vae")
class LadderVAE(GenerativeModel):
    r"""z_L ~ N(0, I), z_l | z_{l+1} ~ N(mu_l(z_{l+1}), diag sigma_l(z_{l+1})^2), x ~ p(x | z_1).

    The generative half of the Ladder VAE: L stochastic layers (three or more), each conditional
    a two-hidden-layer MLP. Latent sites are declared from the data upwards, ``("z1", ..., "zL")``;
    the prior samples z_L first. Its own inference network is the ``ladder`` guide, which merges a
    bottom-up estimate of each layer with this model's top-down conditional
    (:meth:`conditional_prior`), sharing its parameters; any guide covering continuous sites
    (``top_down``, ``bottom_up``, ``mean_field``, ...) fits too. The paper also uses batch
    normalization and a KL warm-up; the warm-up is ``fit(kl_warmup=...)``, batch normalization
    is left out (it makes log p(x) depend on the batch).

    References:
        | Ladder Variational Autoencoders (Sønderby et al., 2016) https://arxiv.org/abs/1602.02282

    Arguments:
        data_shape: shape of one data point.
        latent_dims: sizes of z_1 (bottom) ... z_L (top), at least three (the paper's MNIST model
            uses 64-32-16-8-4).
        hidden: hidden width per layer: the x <-> z_1 networks use ``hidden[0]``, the network
            z_{l+1} -> z_l uses ``hidden[l]`` (the ladder guide's bottom-up networks, the same).
        likelihood, scale, num_levels: observation model, as for ``vae``.
        activation: network activation.
        decoder: ``"mlp"``, ``"conv"`` or ``"resnet"`` for the z_1 -> x network.
        channels: feature maps of the conv and ResNet decoders.
    """

    default_guide = "ladder"

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dims: Sequence[int] = (64, 32, 16),
        hidden: Sequence[int] = (512, 256, 128),
        likelihood: str = "bernoulli",
        scale: float | None = None,
        num_levels: int | None = None,
        activation: str = "tanh",
        decoder: str = "mlp",
        channels: int = 32,
    ):
        super().__init__(data_shape)
        if len(latent_dims) < 3 or any(int(d) <= 0 for d in latent_dims):
            raise ConfigError(
                f"model 'ladder_vae' option 'latent_dims' must be three or more positive sizes (z1 at the bottom), "
                f"got {list(latent_dims)}; for two layers use 'vae2'"
            )
        if len(hidden) != len(latent_dims) or any(int(h) <= 0 for h in hidden):
            raise ConfigError(
                f"model 'ladder_vae' option 'hidden' must be {len(latent_dims)} positive widths, one per latent "
                f"layer, got {list(hidden)}"
            )
        self.latent_dims = tuple(int(d) for d in latent_dims)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.latent_sites = tuple(LatentSite(f"z{i + 1}", (d,)) for i, d in enumerate(self.latent_dims))
        self.observation = create_likelihood(likelihood, self.data_shape, scale=scale, num_levels=num_levels)
        self.decoder = make_decoder(decoder, self.latent_dims[0], self.observation, (self.hidden[0],) * 2,
                                    activation, channels)
        # top_down[i]: z_{i+2} -> the Normal parameters of z_{i+1} (0-based i), two hidden layers of hidden[i+1]
        self.top_down = nn.ModuleList(
            mlp(self.latent_dims[i + 1], (self.hidden[i + 1],) * 2, 2 * self.latent_dims[i], activation)
            for i in range(len(self.latent_dims) - 1)
        )
        self.register_buffer("_zero", torch.zeros(()))

    def conditional_prior(self, level: int, above: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale) of p(z_{level+1} | z_{level+2} = ``above``), ``level`` counted from 0 at the
        bottom; ``level`` below L - 1."""
        loc, raw_scale = self.top_down[level](above).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4

    def prior(self) -> dict[str, Tensor]:
        top = len(self.latent_dims) - 1
        zero = self._zero.expand(self.latent_dims[top])
        values = {f"z{top + 1}": pyro.sample(f"z{top + 1}", dist.Normal(zero, 1.0).to_event(1))}
        for level in range(top - 1, -1, -1):
            loc, scale = self.conditional_prior(level, values[f"z{level + 2}"])
            values[f"z{level + 1}"] = pyro.sample(f"z{level + 1}", dist.Normal(loc, scale).to_event(1))
        return values

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        return self.observation(self.decoder(latents["z1"]))

    def likelihood_log_prob(self, latents: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.observation.log_prob(self.decoder(latents["z1"]), x)

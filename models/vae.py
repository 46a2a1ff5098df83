"""Variational autoencoder with an MLP, convolutional or ResNet decoder, and the decoder builders."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_genmod._registry import register_model
from pyro_genmod.errors import ConfigError
from pyro_genmod.latents import LatentSite
from pyro_genmod.likelihoods import create_likelihood
from pyro_genmod.nn import ACTIVATIONS, RESIDUAL_BLOCKS, ResidualBlock, mlp
from pyro_genmod.priors import make_prior

from .base import GenerativeModel

__all__ = ["DECODERS", "VAE", "ConvDecoder", "make_decoder"]

DECODERS = ("mlp", "conv", "resnet")


class ConvDecoder(nn.Module):
    """Code -> linear -> feature map at 1/4 resolution -> ``residual_blocks`` residual blocks
    -> two stride-2 transposed convolutions -> 3x3 convolution to ``params_per_dim`` maps per
    image channel, cropped to ``(H, W)``. The mirror of :class:`~pyro_genmod.nn.ConvEncoder`.

    The output is flattened to ``(..., params_per_dim * C * H * W)`` with the parameter index
    outermost, as :class:`~pyro_genmod.likelihoods.Likelihood` expects.

    References:
        | Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
          Networks (Radford et al., 2016) https://arxiv.org/abs/1511.06434
        | Deep Residual Learning for Image Recognition (He et al., 2016) https://arxiv.org/abs/1512.03385

    Arguments:
        in_features: width of the code.
        data_shape: image shape ``(C, H, W)``.
        params_per_dim: decoder outputs per pixel (1 for Bernoulli, 2 for discretized logistic).
        channels: feature maps in the last hidden layer (twice as many before it).
        activation: activation between layers.
        residual_blocks: residual blocks at 1/4 resolution (0: plain conv decoder).
    """

    def __init__(
        self,
        in_features: int,
        data_shape: tuple[int, ...],
        params_per_dim: int = 1,
        channels: int = 32,
        activation: str = "relu",
        residual_blocks: int = 0,
    ):
        super().__init__()
        if len(data_shape) != 3:
            what = "a ResNet decoder" if residual_blocks else "a conv decoder"
            raise ConfigError(f"{what} needs image data of shape (C, H, W), got {tuple(data_shape)}; use 'mlp'")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
        if int(channels) <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self.data_shape = tuple(data_shape)
        self.params_per_dim = int(params_per_dim)
        c, h, w = self.data_shape
        c0 = 2 * int(channels)
        self.start = (c0, math.ceil(h / 4), math.ceil(w / 4))
        act = ACTIVATIONS[activation]
        self.project = nn.Sequential(nn.Linear(in_features, math.prod(self.start)), act())
        self.blocks = nn.Sequential(*(ResidualBlock(c0, activation) for _ in range(int(residual_blocks))))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c0, c0, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(c0, int(channels), 4, stride=2, padding=1),
            act(),
            nn.Conv2d(int(channels), c * self.params_per_dim, 3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        batch = z.shape[:-1]
        c, h, w = self.data_shape
        maps = self.net(self.blocks(self.project(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)))
        maps = maps[..., :h, :w].reshape(-1, self.params_per_dim, c, h, w)
        return maps.reshape(*batch, self.params_per_dim * c * h * w)


def make_decoder(
    kind: str,
    in_features: int,
    observation,
    hidden: Sequence[int] = (200, 200),
    activation: str = "tanh",
    channels: int = 32,
) -> nn.Module:
    """A decoder from ``in_features`` to the parameters ``observation`` (a Likelihood) needs.

    ``kind="mlp"`` uses ``hidden`` and ``activation``; ``kind="conv"`` and ``"resnet"`` use
    ``channels`` (with ReLU activations, the usual choice for convolutional decoders; two
    residual blocks for ``"resnet"``), the same options as the encoders
    (:func:`~pyro_genmod.nn.make_encoder`).
    """
    if kind == "mlp":
        return mlp(in_features, hidden, observation.out_features, activation)
    if kind in RESIDUAL_BLOCKS:
        return ConvDecoder(
            in_features, observation.data_shape, observation.params_per_dim, channels, "relu", RESIDUAL_BLOCKS[kind]
        )
    raise ConfigError(f"unknown decoder '{kind}'; choose one of {list(DECODERS)}")


@register_model("vae")
class VAE(GenerativeModel):
    """Variational autoencoder: z ~ p(z), x ~ p(x | decoder(z)), with p(z) = N(0, I) or the VampPrior.

    Thin subclasses change the prior (``vamp``, ``flow_prior``, ``ae``) or the decoder's inputs
    (``cvae``); the decoder, the likelihood and the ``prior`` option are built here
    (:mod:`pyro_genmod.priors`). A subclass with a prior of its own (``flow_prior``, ``ae``)
    refuses ``prior="vamp"``.

    References:
        | Auto-Encoding Variational Bayes (Kingma & Welling, 2014) https://arxiv.org/abs/1312.6114
        | VAE with a VampPrior (Tomczak & Welling, 2018) https://arxiv.org/abs/1705.07120

    Arguments:
        data_shape: shape of one data point.
        latent_dim: dimension of z.
        hidden: MLP decoder hidden-layer widths (Burda et al.'s 200-200 by default).
        likelihood: ``"bernoulli"`` for binary data, ``"gaussian"`` for real values,
            ``"continuous_bernoulli"`` for intensities in [0, 1], ``"discretized_logistic"`` for
            8-bit images scaled to [0, 1].
        scale: fixed standard deviation for the Gaussian likelihood; ``None`` learns one per
            dimension.
        num_levels: number of pixel values for the discretized logistic (default 256).
        activation: ``"tanh"`` (default), ``"relu"``, ``"softplus"`` or ``"elu"``.
        decoder: ``"mlp"`` (default), ``"conv"`` or ``"resnet"`` (images only).
        channels: feature maps of the conv and ResNet decoders.
        prior: ``"standard"`` (N(0, I), default) or ``"vamp"`` (the VampPrior,
            :class:`~pyro_genmod.priors.VampMixturePrior`).
        num_pseudo: K, the VampPrior's number of pseudo-inputs (default 500; ``prior="vamp"`` only).
        encoder_hidden: hidden widths of the VampPrior's pseudo-input encoder (default 200-200;
            ``prior="vamp"`` only).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int = 8,
        hidden: Sequence[int] = (200, 200),
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
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.latent_sites = (LatentSite("z", (self.latent_dim,)),)
        self.observation = create_likelihood(likelihood, self.data_shape, scale=scale, num_levels=num_levels)
        self.decoder_options = dict(kind=decoder, hidden=tuple(hidden), activation=activation, channels=channels)
        self.decoder = self.build_decoder(self.latent_dim)
        if prior != "standard" and type(self).prior_distributions is not VAE.prior_distributions:
            raise ConfigError(f"model '{self.registry_name}' has a prior of its own; it takes no prior={prior!r}")
        self.latent_prior = make_prior(
            prior, self.data_shape, self.latent_dim, num_pseudo, encoder_hidden, activation, likelihood
        )
        self.register_buffer("_zero", torch.zeros(()))

    def build_decoder(self, in_features: int) -> nn.Module:
        """A decoder of the configured kind from ``in_features`` inputs to the likelihood."""
        return make_decoder(in_features=in_features, observation=self.observation, **self.decoder_options)

    def prior_distributions(self) -> dict[str, dist.Distribution]:
        return {"z": self.latent_prior.distribution(like=self._zero)}

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        return self.observation(self.decoder(latents["z"]))

    def likelihood_log_prob(self, latents: dict[str, Tensor], x: Tensor) -> Tensor:
        if type(self).likelihood is not VAE.likelihood:  # a subclass with its own p(x | z)
            return super().likelihood_log_prob(latents, x)
        return self.observation.log_prob(self.decoder(latents["z"]), x)

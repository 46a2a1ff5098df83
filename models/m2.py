"""Kingma's semi-supervised M2: a discrete label y and a continuous style z generate x."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import nullcontext
from math import prod

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import constraints

from pyro_genmod._registry import register_model
from pyro_genmod.distributions import standard_normal
from pyro_genmod.errors import ConfigError
from pyro_genmod.latents import LatentSite
from pyro_genmod.likelihoods import create_likelihood
from pyro_genmod.nn import join_label, mlp

from .base import GenerativeModel
from .vae import make_decoder

__all__ = ["M2", "hide_labels"]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


@register_model("m2")
class M2(GenerativeModel):
    r"""Semi-supervised M2: y ~ Cat(1/C), z ~ N(0, I), x ~ p(x | decoder(z, one_hot(y))).

    ``forward(x, num_samples, y)`` takes labels with -1 for unknown ones. A known label is
    observed (site ``"y_label"``); an unknown one is the latent site ``"y"``, masked out on
    labelled rows, so one minibatch mixes both kinds. The ``m2`` guide, q(y|x) q(z|x, y),
    marks y for parallel enumeration: with ``objective="traceenum_elbo"`` the unlabelled
    bound sums over all C labels exactly, as in the paper; other objectives sample y.

    The classifier q(y|x) is owned by the model, because Kingma's objective J^alpha adds
    alpha * log q(y|x) for every labelled point (site ``"classify"``, a ``pyro.factor``); the
    ``m2`` guide reads it from here. Without labels (scoring, ``evaluate_elbo``) the model is
    p(x) = sum_y p(y) int p(z) p(x|y, z) dz, scored with y sampled from q(y|x).

    References:
        | Semi-Supervised Learning with Deep Generative Models (Kingma, Rezende, Mohamed &
          Welling, 2014) https://arxiv.org/abs/1406.5298

    Arguments:
        data_shape: shape of one data point.
        num_classes: C.
        latent_dim: size of z.
        hidden: hidden widths of the classifier and the decoder.
        likelihood, scale, num_levels, decoder, channels: observation model and decoder, as
            for ``vae``.
        activation: network activation (softplus, as in Pyro's SS-VAE tutorial).
        alpha: weight of the classification term on labelled points (0 turns it off).
    """

    uses_labels = True
    allows_missing_labels = True
    default_guide = "m2"  # q(y|x) q(z|x, y): no other guide covers y and z together

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int = 10,
        latent_dim: int = 16,
        hidden: Sequence[int] = (256,),
        likelihood: str = "bernoulli",
        scale: float | None = None,
        num_levels: int | None = None,
        activation: str = "softplus",
        decoder: str = "mlp",
        channels: int = 32,
        alpha: float = 50.0,
    ):
        super().__init__(data_shape)
        if int(num_classes) < 2 or int(latent_dim) <= 0:
            raise ValueError(f"need num_classes >= 2 and latent_dim > 0, got {num_classes} and {latent_dim}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.num_classes, self.latent_dim, self.alpha = int(num_classes), int(latent_dim), float(alpha)
        self.latent_sites = (
            LatentSite("y", (), constraints.integer_interval(0, self.num_classes - 1), discrete=True),
            LatentSite("z", (self.latent_dim,)),
        )
        self.observation = create_likelihood(likelihood, self.data_shape, scale=scale, num_levels=num_levels)
        self.classifier = mlp(prod(self.data_shape), hidden, self.num_classes, activation)
        inputs = self.latent_dim + self.num_classes
        self.decoder = make_decoder(decoder, inputs, self.observation, hidden, activation, channels)
        self.register_buffer("label_logits", torch.zeros(self.num_classes))  # uniform p(y)

    def classify(self, x: Tensor) -> Tensor:
        """log q(y|x), shape ``(N, C)``."""
        return torch.log_softmax(self.classifier(_flat(x)), dim=-1)

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        """Share of points whose most probable label under q(y|x) is the true one."""
        with torch.no_grad():
            return float((self.classify(x).argmax(-1) == labels).float().mean())

    def _sample_z(self) -> Tensor:
        return pyro.sample("z", standard_normal(self.latent_dim, like=self.label_logits))

    def prior(self) -> dict[str, Tensor]:
        return {"y": pyro.sample("y", dist.Categorical(logits=self.label_logits)), "z": self._sample_z()}

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        return self.observation(self.decoder(join_label(latents["z"], latents["y"], self.num_classes)))

    def forward(self, x: Tensor | None = None, num_samples: int | None = None, y: Tensor | None = None) -> Tensor:
        num = x.shape[0] if x is not None else num_samples
        if num is None:
            raise ValueError("pass data x or num_samples")
        labelled = None
        if y is not None:
            self.validate_labels(y, num)
            labelled = y >= 0
        with pyro.plate("data", num):
            with poutine.mask(mask=~labelled) if labelled is not None else nullcontext():
                label = pyro.sample("y", dist.Categorical(logits=self.label_logits))
            if labelled is not None:
                known = y.clamp(min=0)
                with poutine.mask(mask=labelled):
                    pyro.sample("y_label", dist.Categorical(logits=self.label_logits), obs=known)
                    if x is not None and self.alpha > 0:
                        log_q = self.classify(x).gather(-1, known.unsqueeze(-1)).squeeze(-1)
                        pyro.factor("classify", self.alpha * log_q)
                label = torch.where(labelled, known, label)
            z = self._sample_z()
            return pyro.sample("x", self.likelihood({"y": label, "z": z}), obs=x)


def hide_labels(data, num_labels: int, seed: int = 0):
    """A copy of ``data`` keeping ``num_labels`` training labels, the same number per class
    (as in Kingma et al.), and -1 for every other training point.

    Validation and test labels are kept, for measuring accuracy.
    """
    if data.train_labels is None:
        raise ConfigError(f"dataset '{data.name}' has no labels to hide")
    classes = torch.unique(data.train_labels)
    valid = isinstance(num_labels, int) and not isinstance(num_labels, bool) and num_labels >= len(classes)
    if not valid or num_labels % len(classes):
        raise ConfigError(
            f"num_labels must be a positive multiple of the {len(classes)} classes (equal labels "
            f"per class), got {num_labels!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    keep = torch.zeros_like(data.train_labels, dtype=torch.bool)
    for c in classes:
        rows = (data.train_labels == c).nonzero().squeeze(-1)
        if len(rows) < num_labels // len(classes):
            raise ConfigError(f"class {int(c)} has only {len(rows)} training points; ask for fewer labels")
        keep[rows[torch.randperm(len(rows), generator=generator)[: num_labels // len(classes)]]] = True
    labels = torch.where(keep, data.train_labels, torch.full_like(data.train_labels, -1))
    return dataclasses.replace(data, train_labels=labels)

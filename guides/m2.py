"""M2's own inference network q(y|x) q(z|x, y) (Kingma et al., 2014), for model ``m2``."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from math import prod

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import Tensor, nn

from pyro_genmod._registry import register_guide
from pyro_genmod.nn import join_label, make_encoder, mlp

from .base import Guide

__all__ = ["M2Guide"]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


@register_guide("m2")
class M2Guide(Guide):
    r"""M2's own inference network: q(y|x) q(z|x, y), diagonal Normal z.

    q(y|x) is the model's classifier (:meth:`M2.classify`); y is marked for parallel
    enumeration. On labelled rows (``y >= 0``) the y site is masked out and z is drawn given
    the known label. Fits model ``m2`` only.

    References:
        | Semi-Supervised Learning with Deep Generative Models (Kingma et al., 2014)
          https://arxiv.org/abs/1406.5298

    Arguments:
        model: an :class:`~pyro_genmod.models.m2.M2`.
        hidden: hidden widths of the q(z|x, y) network.
        activation: its activation.
        encoder: how it reads x: ``"mlp"`` (default; x flattened, joined with one_hot(y)),
            ``"conv"`` or ``"resnet"`` (images only; the conv feature map is joined with one_hot(y)).
        channels: feature maps of the conv and ResNet encoders.
    """

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        if getattr(model, "registry_name", None) != "m2" or not hasattr(model, "classify"):
            return "guide 'm2' is the inference network of model 'm2' (q(y|x) q(z|x, y)) and fits no other model"
        return None

    def __init__(
        self, model, hidden: Sequence[int] = (256,), activation: str = "softplus", encoder: str = "mlp",
        channels: int = 32,
    ):
        super().__init__(model)
        object.__setattr__(self, "_model", model)  # the classifier's parameters are the model's
        if encoder == "mlp":
            self.features: nn.Module = nn.Identity()
            width = prod(self.data_shape)
        else:  # the feature map, without the encoder's last linear layer: the label joins it there
            self.features = make_encoder(encoder, self.data_shape, None, channels=channels)
            width = self.features.width
        self.encoder = mlp(width + model.num_classes, hidden, 2 * model.latent_dim, activation)

    def forward(self, x: Tensor, num_samples: int | None = None, y: Tensor | None = None) -> dict[str, Tensor]:
        model = self._model
        labelled = y >= 0 if y is not None else None
        with pyro.plate(self.data_plate, x.shape[0]):
            with poutine.mask(mask=~labelled) if labelled is not None else nullcontext():
                q_y = dist.Categorical(logits=model.classify(x))
                label = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            if labelled is not None:
                label = torch.where(labelled, y.clamp(min=0), label)
            features = self.features(_flat(x))
            loc, raw_scale = self.encoder(join_label(features, label, model.num_classes)).chunk(2, dim=-1)
            z = pyro.sample("z", dist.Normal(loc, F.softplus(raw_scale) + 1e-4).to_event(1))
        return {"y": label, "z": z}

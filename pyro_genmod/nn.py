"""Small network builders shared by models and guides: MLPs, and the conv / ResNet encoders."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["ACTIVATIONS", "ENCODERS", "ConvEncoder", "ResidualBlock", "image_shape", "join_label", "make_encoder", "mlp"]

ENCODERS = ("mlp", "conv", "resnet")
RESIDUAL_BLOCKS = {"conv": 0, "resnet": 2}  # residual blocks at the lowest resolution, per kind

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "tanh") -> nn.Sequential:
    """A multilayer perceptron ``in -> hidden... -> out`` with ``activation`` between layers."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
    if any(int(h) <= 0 for h in hidden):
        raise ValueError(f"hidden layer sizes must be positive, got {list(hidden)}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
        width = int(h)
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def join_label(features: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """``[features, one_hot(y)]`` on the last dimension, broadcasting their batch dimensions.

    ``features`` has shape ``(..., F)`` and ``y`` integer shape ``(...)``; under enumeration or
    particle plates the two batch shapes differ, so both are expanded to the broadcast shape.
    """
    one_hot = F.one_hot(y.long(), num_classes).to(features.dtype)
    batch = torch.broadcast_shapes(features.shape[:-1], one_hot.shape[:-1])
    return torch.cat([features.expand(*batch, -1), one_hot.expand(*batch, -1)], dim=-1)


def image_shape(data_shape: Sequence[int], what: str) -> tuple[int, int, int]:
    """``data_shape`` as ``(C, H, W)``, or :class:`ConfigError` saying ``what`` needs image data
    (``what`` is for example ``"a conv encoder"``); images smaller than 4x4 are refused too."""
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3:
        raise ConfigError(f"{what} needs image data of shape (C, H, W), got {shape}; use 'mlp' for other data")
    if min(shape[1:]) < 4:
        raise ConfigError(f"{what} needs images of at least 4x4 pixels, got {shape}; use 'mlp'")
    return shape  # type: ignore[return-value]


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the residual block of the VQ-VAE and of pythae's
    ResNet encoders and decoders, keeping ``channels`` maps and the resolution.

    References:
        | Neural Discrete Representation Learning (van den Oord et al., 2017) https://arxiv.org/abs/1711.00937
    """

    def __init__(self, channels: int, activation: str = "relu"):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.net = nn.Sequential(
            act(), nn.Conv2d(channels, channels, 3, padding=1), act(), nn.Conv2d(channels, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ConvEncoder(nn.Module):
    """Image -> two stride-2 4x4 convolutions (``channels``, then ``2 * channels`` maps) ->
    ``residual_blocks`` residual blocks -> linear to ``out_features``: the mirror of
    :class:`~pyro_genmod.models.vae.ConvDecoder`.

    Takes points flattened to ``(..., C * H * W)``, as guides pass them, and returns
    ``(..., out_features)``. :attr:`width` is the size of the flattened feature map, the input of
    the final linear layer (:attr:`head`), which a guide may replace by its own network.

    References:
        | Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
          Networks (Radford et al., 2016) https://arxiv.org/abs/1511.06434
        | Deep Residual Learning for Image Recognition (He et al., 2016) https://arxiv.org/abs/1512.03385

    Arguments:
        data_shape: image shape ``(C, H, W)``.
        out_features: width of the output; ``None`` returns the flattened feature map itself.
        channels: feature maps of the first convolution (twice as many after the second).
        activation: activation between layers.
        residual_blocks: residual blocks after the convolutions (0: plain conv encoder).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        out_features: int | None,
        channels: int = 32,
        activation: str = "relu",
        residual_blocks: int = 0,
    ):
        super().__init__()
        kind = "a ResNet encoder" if residual_blocks else "a conv encoder"
        self.data_shape = image_shape(data_shape, kind)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
        if isinstance(channels, bool) or int(channels) <= 0:
            raise ConfigError(f"channels must be a positive integer, got {channels!r}")
        c, h, w = self.data_shape
        c1, c2 = int(channels), 2 * int(channels)
        act = ACTIVATIONS[activation]
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1), act(), nn.Conv2d(c1, c2, 4, stride=2, padding=1), act()
        )
        self.blocks = nn.Sequential(*(ResidualBlock(c2, activation) for _ in range(int(residual_blocks))))
        if residual_blocks:
            self.blocks.append(act())
        self.width = c2 * (h // 4) * (w // 4)  # each 4x4, stride-2, padding-1 convolution halves (floor)
        self.head: nn.Module = nn.Identity() if out_features is None else nn.Linear(self.width, int(out_features))

    def features(self, x: Tensor) -> Tensor:
        """The flattened feature map, shape ``(..., width)``, of points ``(..., C * H * W)``."""
        batch = x.shape[:-1]
        maps = self.blocks(self.net(x.reshape(-1, *self.data_shape)))
        return maps.reshape(*batch, self.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def make_encoder(
    kind: str,
    data_shape: Sequence[int],
    out_features: int,
    hidden: Sequence[int] = (200, 200),
    activation: str = "tanh",
    channels: int = 32,
) -> nn.Module:
    """An encoder from points flattened to ``(..., prod(data_shape))`` to ``out_features``.

    ``kind="mlp"`` is :func:`mlp` with ``hidden`` and ``activation``; ``"conv"`` and ``"resnet"``
    are :class:`ConvEncoder` with ``channels`` (ReLU, two residual blocks for ``"resnet"``), the
    same options as the decoders (:func:`~pyro_genmod.models.vae.make_decoder`). Non-image data
    with a conv or ResNet encoder raises :class:`ConfigError`.
    """
    if kind == "mlp":
        return mlp(math.prod(data_shape), hidden, out_features, activation)
    if kind in RESIDUAL_BLOCKS:
        return ConvEncoder(data_shape, out_features, channels, "relu", RESIDUAL_BLOCKS[kind])
    raise ConfigError(f"unknown encoder '{kind}'; choose one of {list(ENCODERS)}")

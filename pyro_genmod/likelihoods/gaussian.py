"""Independent Normal observations, with a fixed or learned standard deviation."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_genmod._registry import register_likelihood

from .base import Likelihood

__all__ = ["Gaussian"]


@register_likelihood("gaussian")
class Gaussian(Likelihood):
    """Independent Normal with mean from the decoder and a fixed (``scale``) or learned
    per-dimension standard deviation."""


    def __init__(self, data_shape: tuple[int, ...], scale: float | None = None):
        super().__init__(data_shape)
        if scale is None:
            self.log_scale = nn.Parameter(torch.full(self.data_shape, -1.0))
        else:
            if not scale > 0:
                raise ValueError(f"the Gaussian scale must be positive, got {scale}")
            self.register_buffer("log_scale", torch.full(self.data_shape, float(scale)).log())

    def forward(self, out: Tensor) -> dist.Distribution:
        return dist.Normal(self._reshape(out), self.log_scale.exp(), validate_args=False).to_event(
            len(self.data_shape)
        )

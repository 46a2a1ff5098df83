"""The continuous Bernoulli likelihood for intensities in [0, 1]."""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from pyro_genmod._registry import register_likelihood

from .base import Likelihood, unit_interval_problem

__all__ = ["ContinuousBernoulli"]


@register_likelihood("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli pixels for intensities in [0, 1], the properly normalized version of
    the Bernoulli "likelihood" that VAEs often apply to grey values.

    References:
        | The continuous Bernoulli: fixing a pervasive error in variational autoencoders
          (Loaiza-Ganem & Cunningham, 2019) https://arxiv.org/abs/1907.06845
    """


    def forward(self, out: Tensor) -> dist.Distribution:
        # torch clamps probabilities near 0.5 with a Taylor expansion of the normalizer.
        return dist.ContinuousBernoulli(logits=self._reshape(out), validate_args=False).to_event(
            len(self.data_shape)
        )

    def data_problem(self, x: Tensor) -> str | None:
        return unit_interval_problem(x, "continuous Bernoulli")

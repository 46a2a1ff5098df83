"""Independent Bernoulli pixels: the likelihood for binary (or binarized) data."""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from pyro_genmod._registry import register_likelihood

from .base import Likelihood, bernoulli_logits_log_prob

__all__ = ["Bernoulli"]


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder; for binary data."""

    def forward(self, out: Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self._reshape(out), validate_args=False).to_event(len(self.data_shape))

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        # over the flat pixels: the decoder output as it is, x flattened
        return bernoulli_logits_log_prob(out, x.reshape(*x.shape[: x.dim() - len(self.data_shape)], self.size), 1)

    def data_problem(self, x: Tensor) -> str | None:
        if not bool(((x == 0) | (x == 1)).all()):
            return (
                "a Bernoulli likelihood needs values in {0, 1}; load the dataset with "
                "binarize=True, or use likelihood='gaussian'"
            )
        return None

"""The discretized logistic likelihood for images with a fixed number of grey levels."""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from pyro_genmod._registry import register_likelihood

from .base import Likelihood, unit_interval_problem

__all__ = ["DiscretizedLogisticDistribution", "DiscretizedLogistic"]


def _log_sigmoid_difference(a: Tensor, b: Tensor) -> Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, stable in both tails."""
    # sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a); use the side away from saturation.
    flip = (a + b) > 0
    hi, lo = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = F.logsigmoid(hi), F.logsigmoid(lo)
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp(max=-1e-12)))


class DiscretizedLogisticDistribution(TorchDistribution):
    r"""A logistic density integrated over the bins of ``num_levels`` evenly spaced values in
    [0, 1] (PixelCNN++'s likelihood for 8-bit images, on [0, 1] instead of [-1, 1]).

    P(x = k / (L - 1)) = sigma((x + h - mu) / s) - sigma((x - h - mu) / s) with h = 1 / (2(L - 1));
    the lowest and highest bins take the whole tails, so the L probabilities sum to one.

    Arguments:
        loc: mu, any shape.
        scale: s > 0, broadcastable with ``loc``.
        num_levels: L, the number of values (256 for 8-bit images).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, num_levels: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.num_levels = int(num_levels)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.unit_interval

    @property
    def half_bin(self) -> float:
        return 0.5 / (self.num_levels - 1)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return DiscretizedLogisticDistribution(
            self.loc.expand(shape), self.scale.expand(shape), self.num_levels
        )

    def log_prob(self, value: Tensor) -> Tensor:
        plus = (value + self.half_bin - self.loc) / self.scale
        minus = (value - self.half_bin - self.loc) / self.scale
        middle = _log_sigmoid_difference(plus, minus)
        lowest = F.logsigmoid(plus)  # the bin at 0 takes (-inf, h]
        highest = F.logsigmoid(-minus)  # the bin at 1 takes [1 - h, inf)
        return torch.where(value < self.half_bin, lowest, torch.where(value > 1 - self.half_bin, highest, middle))

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            y = self.loc.expand(shape) + self.scale.expand(shape) * (u.log() - (-u).log1p())
            steps = self.num_levels - 1
            return (y * steps).round().clamp(0, steps) / steps

    @property
    def mean(self) -> Tensor:
        """Exact mean, summing over the ``num_levels`` values."""
        levels = torch.linspace(0, 1, self.num_levels, dtype=self.loc.dtype, device=self.loc.device)
        grid = levels.reshape(-1, *([1] * self.loc.dim()))
        return (self.log_prob(grid).exp() * grid).sum(0)


@register_likelihood("discretized_logistic")
class DiscretizedLogistic(Likelihood):
    """Discretized logistic for 8-bit (or any ``num_levels``-valued) images scaled to [0, 1];
    the decoder gives a location and a log-scale per pixel.

    References:
        | PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture Likelihood and
          Other Modifications (Salimans et al., 2017) https://arxiv.org/abs/1701.05517

    Arguments:
        data_shape: shape of one data point.
        num_levels: number of evenly spaced values in [0, 1]: 256 for 8-bit images, 17 for
            scikit-learn's digits loaded with ``binarize=False``.
    """

    params_per_dim = 2

    def __init__(self, data_shape: tuple[int, ...], num_levels: int = 256):
        super().__init__(data_shape)
        if int(num_levels) < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}")
        self.num_levels = int(num_levels)

    def forward(self, out: Tensor) -> dist.Distribution:
        loc, log_scale = self._split(out)
        scale = log_scale.clamp(min=-7.0).exp()
        base = DiscretizedLogisticDistribution(loc, scale, self.num_levels, validate_args=False)
        return base.to_event(len(self.data_shape))

    def data_problem(self, x: Tensor) -> str | None:
        problem = unit_interval_problem(x, "discretized logistic")
        if problem:
            return problem
        steps = x * (self.num_levels - 1)
        if bool(((steps - steps.round()).abs() > 1e-3).any()):
            return (
                f"a discretized logistic likelihood with num_levels={self.num_levels} needs "
                f"values k / {self.num_levels - 1}; set num_levels to the data's number of levels "
                f"(17 for digits, 256 for 8-bit images) and load it with binarize=False"
            )
        return None

"""Observation models p(x | decoder output), each a small module returning a Pyro distribution."""

from __future__ import annotations

import inspect
from math import prod

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from .distributions import sum_event

__all__ = [
    "Likelihood",
    "Bernoulli",
    "Gaussian",
    "ContinuousBernoulli",
    "DiscretizedLogistic",
    "DiscretizedLogisticDistribution",
    "create_likelihood",
    "LIKELIHOODS",
    "bernoulli_logits_log_prob",
]


class Likelihood(nn.Module):
    """Contract: ``forward(out)`` maps decoder output of shape ``(..., out_features)`` to a
    distribution with event shape ``data_shape``; ``data_problem(x)`` says why ``x`` is outside
    its support. ``size`` is the number of scalars in one point and ``out_features`` =
    ``params_per_dim * size`` the width a decoder must produce."""

    name = ""
    params_per_dim = 1

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.size = prod(self.data_shape)

    @property
    def out_features(self) -> int:
        return self.params_per_dim * self.size

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        """log p(x | decoder output ``out``) per point, summed over the data dimensions:
        ``self(out).log_prob(x)``. A subclass may compute it without building the distribution
        (every training step of a VAE calls it)."""
        return self(out).log_prob(x)

    def _reshape(self, out: Tensor) -> Tensor:
        return out.reshape(*out.shape[:-1], *self.data_shape)

    def _split(self, out: Tensor) -> list[Tensor]:
        """The decoder output as ``params_per_dim`` tensors of shape ``(..., *data_shape)``."""
        return [self._reshape(part) for part in out.split(self.size, dim=-1)]

    def data_problem(self, x: Tensor) -> str | None:
        return None


def bernoulli_logits_log_prob(logits: Tensor, value: Tensor, event_dims: int) -> Tensor:
    """``Bernoulli(logits).to_event(event_dims).log_prob(value)`` without building it: the
    elementwise log-density is -BCE-with-logits; the sum over the event is negated once
    (bit-identical to negating each term, one full-size pass cheaper)."""
    if logits.shape != value.shape:
        logits, value = torch.broadcast_tensors(logits, value)
    bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
    return -sum_event(bce, event_dims)


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder; for binary data."""

    name = "bernoulli"

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


class Gaussian(Likelihood):
    """Independent Normal with mean from the decoder and a fixed (``scale``) or learned
    per-dimension standard deviation."""

    name = "gaussian"

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


def _unit_interval_problem(x: Tensor, name: str) -> str | None:
    if bool(((x < 0) | (x > 1)).any()):
        return f"a {name} likelihood needs values in [0, 1]; rescale the data"
    return None


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli pixels for intensities in [0, 1], the properly normalized version of
    the Bernoulli "likelihood" that VAEs often apply to grey values.

    References:
        | The continuous Bernoulli: fixing a pervasive error in variational autoencoders
          (Loaiza-Ganem & Cunningham, 2019) https://arxiv.org/abs/1907.06845
    """

    name = "continuous_bernoulli"

    def forward(self, out: Tensor) -> dist.Distribution:
        # torch clamps probabilities near 0.5 with a Taylor expansion of the normalizer.
        return dist.ContinuousBernoulli(logits=self._reshape(out), validate_args=False).to_event(
            len(self.data_shape)
        )

    def data_problem(self, x: Tensor) -> str | None:
        return _unit_interval_problem(x, "continuous Bernoulli")


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

    name = "discretized_logistic"
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
        problem = _unit_interval_problem(x, "discretized logistic")
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


LIKELIHOODS = {cls.name: cls for cls in (Bernoulli, Gaussian, ContinuousBernoulli, DiscretizedLogistic)}


def create_likelihood(name: str, data_shape: tuple[int, ...], **options) -> Likelihood:
    """Build the likelihood ``name``; options left at ``None`` are not passed.

    Raises ``ValueError`` for an unknown name or an option this likelihood does not take (for
    example ``scale`` applies only to ``gaussian``, ``num_levels`` only to
    ``discretized_logistic``).
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood '{name}'; choose one of {sorted(LIKELIHOODS)}")
    cls = LIKELIHOODS[name]
    options = {k: v for k, v in options.items() if v is not None}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "data_shape"}
    for key in options:
        if key not in accepted:
            raise ValueError(f"{key} does not apply to likelihood='{name}' (its options: {sorted(accepted) or 'none'})")
    return cls(data_shape, **options)

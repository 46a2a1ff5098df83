"""Priors p(z) over a vector latent, shared by the VAE family: the standard Normal and the VampPrior.

A model holds its prior as a module (``model.latent_prior``), built by :func:`make_prior` from
the model's ``prior`` option; its :meth:`distribution` is the model's ``prior_distributions``
entry for the site, so the trace-free training step and the importance-sampling scorer score
it like any other prior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from .distributions import standard_normal
from .errors import ConfigError
from .nn import mlp

__all__ = ["PRIORS", "DiagonalGaussianMixture", "StandardNormalPrior", "VampMixturePrior", "make_prior"]

PRIORS = ("standard", "vamp")
UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "discretized_logistic")


class DiagonalGaussianMixture(TorchDistribution):
    r"""Equal-weight mixture of K diagonal Gaussians on R^d, a distribution over one vector.

    ``log_prob`` expands the K quadratic forms as matrix products, so memory is O(rows x K)
    rather than O(rows x K x d) as with ``MixtureSameFamily`` (K = 500 in the VampPrior).

    Arguments:
        loc: component means, shape ``(K, d)``.
        scale: component standard deviations, shape ``(K, d)``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, batch_shape=torch.Size(), validate_args=None):
        self.loc, self.scale = loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return DiagonalGaussianMixture(self.loc, self.scale, batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        precision = self.scale.pow(-2)  # (K, d)
        quadratic = (
            value.pow(2) @ precision.T
            - 2 * value @ (self.loc * precision).T
            + (self.loc.pow(2) * precision).sum(-1)
        )  # (..., K)
        log_norm = -self.scale.log().sum(-1) - 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)
        log_components = log_norm - 0.5 * quadratic
        log_p = torch.logsumexp(log_components, dim=-1) - math.log(self.loc.shape[0])
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            k = torch.randint(self.loc.shape[0], shape[:-1], device=self.loc.device)
            return self.loc[k] + self.scale[k] * torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over vectors of ``latent_dim``; no parameters."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)

    def distribution(self, like: Tensor | None = None) -> TorchDistribution:
        """p(z), with the dtype and device of ``like``."""
        return standard_normal(self.latent_dim, like=like)


class VampMixturePrior(nn.Module):
    r"""The VampPrior p(z) = (1/K) sum_k q_phi(z | u_k): a mixture of diagonal Gaussians at K
    learned, data-shaped pseudo-inputs u_k.

    Tomczak & Welling evaluate the pseudo-inputs with the guide's encoder; here the prior owns
    its encoder q_phi, so p(x, z) is a self-contained model that pairs with any guide and is
    scored like any other (the guide is only a proposal). The price is a second encoder's
    parameters; tying them would make the prior depend on the guide.

    References:
        | VAE with a VampPrior (Tomczak & Welling, 2018) https://arxiv.org/abs/1705.07120

    Arguments:
        data_shape: shape of one data point (and of each pseudo-input).
        latent_dim: dimension of z.
        num_pseudo: K, the number of pseudo-inputs (500 in the paper).
        hidden: hidden widths of the pseudo-input encoder.
        activation: its activation.
        clip: clip the pseudo-inputs to [0, 1] (hardtanh, as in the paper), for likelihoods on
            the unit interval.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        num_pseudo: int = 500,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        clip: bool = True,
    ):
        super().__init__()
        if isinstance(num_pseudo, bool) or int(num_pseudo) <= 0:
            raise ConfigError(f"num_pseudo must be a positive integer, got {num_pseudo!r}")
        self.num_pseudo, self.latent_dim, self.clip = int(num_pseudo), int(latent_dim), bool(clip)
        self.data_shape = tuple(int(d) for d in data_shape)
        self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(self.num_pseudo, *self.data_shape))
        self.encoder = mlp(math.prod(self.data_shape), hidden, 2 * self.latent_dim, activation)

    def components(self) -> tuple[Tensor, Tensor]:
        """Means and standard deviations of q_phi(z | u_k), each of shape ``(K, latent_dim)``."""
        u = F.hardtanh(self.pseudo_inputs, 0.0, 1.0) if self.clip else self.pseudo_inputs
        loc, raw_scale = self.encoder(u.reshape(self.num_pseudo, -1)).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4

    def distribution(self, like: Tensor | None = None) -> TorchDistribution:
        """p(z) (``like`` is unused: the mixture lives where the pseudo-inputs do)."""
        return DiagonalGaussianMixture(*self.components())


def make_prior(
    kind: str,
    data_shape: Sequence[int],
    latent_dim: int,
    num_pseudo: int | None = None,
    encoder_hidden: Sequence[int] | None = None,
    activation: str = "tanh",
    likelihood: str = "bernoulli",
) -> nn.Module:
    """The prior ``kind`` (``"standard"`` or ``"vamp"``) over vectors of ``latent_dim``: a model's
    ``prior`` option.

    ``num_pseudo`` (default 500) and ``encoder_hidden`` (default 200-200) configure the
    VampPrior and are refused with another prior; its pseudo-inputs are clipped to [0, 1] for a
    ``likelihood`` on the unit interval.
    """
    if kind not in PRIORS:
        raise ConfigError(f"unknown prior '{kind}'; choose one of {list(PRIORS)}")
    if kind == "standard":
        if num_pseudo is not None or encoder_hidden is not None:
            option = "num_pseudo" if num_pseudo is not None else "encoder_hidden"
            raise ConfigError(f"{option} applies to prior='vamp' only, not prior={kind!r}")
        return StandardNormalPrior(latent_dim)
    return VampMixturePrior(
        data_shape,
        latent_dim,
        500 if num_pseudo is None else num_pseudo,
        (200, 200) if encoder_hidden is None else encoder_hidden,
        activation,
        clip=likelihood in UNIT_INTERVAL_LIKELIHOODS,
    )

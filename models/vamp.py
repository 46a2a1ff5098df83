"""VAE with the VampPrior: a mixture of variational posteriors at learned pseudo-inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_genmod._registry import register_model
from pyro_genmod.nn import mlp

from .vae import VAE

__all__ = ["VampPrior", "DiagonalGaussianMixture"]

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


@register_model("vamp")
class VampPrior(VAE):
    r"""VAE whose prior is the VampPrior p(z) = (1/K) sum_k q_phi(z | u_k).

    The K pseudo-inputs u_k are learned data-shaped parameters. Tomczak & Welling evaluate
    them with the guide's encoder; here the model owns its own encoder q_phi for them
    (same architecture as the ``mean_field`` guide), so p(x, z) is a self-contained model that
    pairs with any guide and is scored like any other (the guide is only a proposal). The price
    is a second encoder's parameters; tying them would make the prior depend on the guide.

    References:
        | VAE with a VampPrior (Tomczak & Welling, 2018) https://arxiv.org/abs/1705.07120

    Arguments:
        num_pseudo: K, the number of pseudo-inputs (500 in the paper).
        encoder_hidden: hidden widths of the pseudo-input encoder.
        **vae_options: as :class:`~pyro_genmod.models.vae.VAE` (``data_shape``, ``latent_dim``,
            ``hidden``, ``likelihood``, ...). For likelihoods on [0, 1] the pseudo-inputs are
            clipped to [0, 1] (hardtanh, as in the paper).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_pseudo: int = 500,
        encoder_hidden: Sequence[int] = (200, 200),
        **vae_options,
    ):
        super().__init__(data_shape, **vae_options)
        if int(num_pseudo) <= 0:
            raise ValueError(f"num_pseudo must be positive, got {num_pseudo}")
        self.num_pseudo = int(num_pseudo)
        self.clip_pseudo = vae_options.get("likelihood", "bernoulli") in UNIT_INTERVAL_LIKELIHOODS
        self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(self.num_pseudo, *self.data_shape))
        activation = vae_options.get("activation", "tanh")
        self.prior_encoder = mlp(math.prod(self.data_shape), encoder_hidden, 2 * self.latent_dim, activation)

    def components(self) -> tuple[Tensor, Tensor]:
        """Means and standard deviations of q_phi(z | u_k), each of shape ``(K, latent_dim)``."""
        u = F.hardtanh(self.pseudo_inputs, 0.0, 1.0) if self.clip_pseudo else self.pseudo_inputs
        loc, raw_scale = self.prior_encoder(u.reshape(self.num_pseudo, -1)).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4

    def prior_distributions(self) -> dict[str, TorchDistribution]:
        return {"z": DiagonalGaussianMixture(*self.components())}

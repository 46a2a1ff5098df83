"""Plain autoencoder baseline: a point code and no prior term (an improper flat prior)."""

from __future__ import annotations

import functools

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from pyro_genmod._registry import register_model

from .vae import VAE

__all__ = ["Autoencoder", "FlatCode"]


class FlatCode(TorchDistribution):
    """Improper flat density on R^d (``log_prob`` is 0 everywhere) whose ``sample`` draws
    reference codes from N(loc, diag scale^2), the codes an autoencoder is asked to decode.

    Arguments:
        loc: mean of the reference codes, shape ``(..., d)``.
        scale: their standard deviation, broadcastable with ``loc``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return FlatCode(self.loc.expand(shape), self.scale.expand(shape))

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc.expand(shape) + self.scale.expand(shape) * noise

    def log_prob(self, value: Tensor) -> Tensor:
        return value.new_zeros(torch.broadcast_shapes(value.shape[:-1], self.batch_shape))


@register_model("ae")
class Autoencoder(VAE):
    """Plain autoencoder: the VAE's decoder and likelihood with an improper flat prior on z.

    With the ``delta`` guide, z = f(x) and the ELBO is exactly log p(x | f(x)): binary cross
    entropy for ``likelihood="bernoulli"``, a scaled squared error for a fixed-scale
    ``"gaussian"``, and no KL term. With a density guide (``mean_field``) the objective is
    E_q log p(x|z) + H(q): a noisy autoencoder with an entropy bonus and still no prior.

    There is no normalized p(z), so log p(x) is undefined: the importance-sampling scorer
    refuses this model (``has_log_likelihood = False``); its validation "ELBO" is the
    reconstruction log-likelihood. ``sample`` decodes reference codes z ~ N(code_loc,
    code_scale^2), by default N(0, I); :meth:`fit_code_distribution` matches them to the
    training codes, the fairest way to ask whether random codes decode to data.

    References:
        | Reducing the Dimensionality of Data with Neural Networks (Hinton & Salakhutdinov,
          2006) https://www.science.org/doi/10.1126/science.1127647

    Arguments: as :class:`~pyro_genmod.models.vae.VAE`.
    """

    has_log_likelihood = False

    @functools.wraps(VAE.__init__)  # same options as the VAE
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("code_loc", torch.zeros(self.latent_dim))
        self.register_buffer("code_scale", torch.ones(self.latent_dim))

    def prior_distributions(self) -> dict[str, TorchDistribution]:
        return {"z": FlatCode(self.code_loc, self.code_scale)}

    def fit_code_distribution(self, codes: Tensor) -> None:
        """Set the reference code distribution to the per-dimension mean and std of ``codes``."""
        if codes.ndim != 2 or codes.shape[1] != self.latent_dim or codes.shape[0] < 2:
            raise ValueError(f"codes must have shape (N >= 2, {self.latent_dim}), got {tuple(codes.shape)}")
        self.code_loc.copy_(codes.mean(0))
        self.code_scale.copy_(codes.std(0).clamp(min=1e-6))

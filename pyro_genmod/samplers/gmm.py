"""A Gaussian mixture over the latent codes (scikit-learn's EM), drawn from in torch."""

from __future__ import annotations

import torch
import torch.distributions as tdist
from torch import Tensor

from pyro_genmod.errors import ConfigError, DataError

from .base import LatentSampler, register_sampler

__all__ = ["GMMSampler"]


@register_sampler("gmm")
class GMMSampler(LatentSampler):
    """A mixture of ``num_components`` full-covariance Gaussians fitted to the codes by EM.

    The mixture is fitted by :class:`sklearn.mixture.GaussianMixture` and drawn from as a torch
    ``MixtureSameFamily``, so draws follow torch's generator (and :func:`seeded`).

    References:
        | From Variational to Deterministic Autoencoders (Ghosh, Sajjadi, Vergari, Black &
          Schölkopf, 2020) https://arxiv.org/abs/1903.12436

    Arguments:
        num_components: mixture components (10 for the ten digit classes, as in pythae).
        covariance_type: ``full`` or ``diag`` (scikit-learn's names).
        max_iter: EM iterations.
        seed: seed of the k-means initialization.
    """

    def __init__(self, num_components: int = 10, covariance_type: str = "full", max_iter: int = 200, seed: int = 0):
        super().__init__()
        if int(num_components) < 1:
            raise ConfigError(f"sampler 'gmm' needs num_components >= 1, got {num_components}")
        if covariance_type not in ("full", "diag"):
            raise ConfigError(f"sampler 'gmm' covariance_type must be 'full' or 'diag', got {covariance_type!r}")
        self.num_components, self.covariance_type = int(num_components), covariance_type
        self.max_iter, self.seed = int(max_iter), int(seed)

    def _fit(self, codes: Tensor) -> None:
        # imported when used: scikit-learn is slow to import
        from sklearn.mixture import GaussianMixture

        if codes.shape[0] < self.num_components:
            raise DataError(f"sampler 'gmm' needs at least num_components={self.num_components} codes, got {codes.shape[0]}")
        mixture = GaussianMixture(
            self.num_components, covariance_type=self.covariance_type, max_iter=self.max_iter,
            random_state=self.seed, reg_covar=1e-6,
        ).fit(codes.double().numpy())
        dtype = codes.dtype
        self.weights = torch.as_tensor(mixture.weights_, dtype=dtype)
        self.means = torch.as_tensor(mixture.means_, dtype=dtype)
        covariances = torch.as_tensor(mixture.covariances_, dtype=torch.float64)
        if self.covariance_type == "diag":
            covariances = torch.diag_embed(covariances)
        self.scale_tril = torch.linalg.cholesky(covariances).to(dtype)

    def distribution(self) -> tdist.Distribution:
        """The fitted mixture as a torch distribution over codes of shape ``(D,)``."""
        components = tdist.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        return tdist.MixtureSameFamily(tdist.Categorical(probs=self.weights), components)

    def _sample(self, num_samples: int) -> Tensor:
        return self.distribution().sample((num_samples,))

"""Probabilistic PCA: factor analysis with isotropic noise, and its closed-form ML solution."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_genmod._registry import register_model
from pyro_genmod.errors import ConfigError

from .factor_analysis import FactorAnalysis

__all__ = ["PPCA"]


@register_model("ppca")
class PPCA(FactorAnalysis):
    r"""Probabilistic PCA: z ~ N(0, I_q), x = W z + mu + eps with eps ~ N(0, sigma^2 I).

    The marginal is x ~ N(mu, W W^T + sigma^2 I) (:meth:`exact_log_likelihood`), and the
    maximum-likelihood parameters are known in closed form (:meth:`fit_closed_form`): with
    lambda_1 >= ... >= lambda_D the eigenvalues of the sample covariance S and U_q the leading
    eigenvectors, sigma^2 = mean(lambda_{q+1}, ..., lambda_D), W = U_q (Lambda_q - sigma^2 I)^{1/2}
    and mu the sample mean.

    References:
        | Probabilistic Principal Component Analysis (Tipping & Bishop, 1999)
          https://doi.org/10.1111/1467-9868.00196

    Arguments:
        data_shape: shape of one data point.
        latent_dim: q, the number of principal components.
        init_scale: standard deviation of the random initial W.

    Example:
        >>> import torch, pyro_genmod as pg
        >>> x = torch.randn(500, 6) @ torch.randn(6, 6)
        >>> model = pg.create_model("ppca", (6,), latent_dim=2).fit_closed_form(x)
        >>> model.exact_log_likelihood(x).shape
        torch.Size([500])
    """

    def noise_shape(self, size: int) -> tuple[int, ...]:
        return ()

    @torch.no_grad()
    def fit_closed_form(self, x: Tensor) -> PPCA:
        """Set mu, W and sigma to Tipping & Bishop's maximum-likelihood solution for ``x``.

        Computed in float64 from the eigendecomposition of the (1/N) sample covariance.
        Returns the model itself.
        """
        self.validate_data(x)
        flat = x.reshape(x.shape[0], -1).double()
        size = flat.shape[1]
        if self.latent_dim >= size:
            raise ConfigError(
                f"the closed-form PPCA solution needs latent_dim < data dimension, got "
                f"latent_dim={self.latent_dim} for {size} dimensions"
            )
        mean = flat.mean(dim=0)
        centred = flat - mean
        covariance = centred.T @ centred / flat.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        noise = eigenvalues[self.latent_dim :].mean()
        spread = (eigenvalues[: self.latent_dim] - noise).clamp_min(0).sqrt()
        weight = eigenvectors[:, : self.latent_dim] * spread
        self.loc.copy_(mean.to(self.loc))
        self.weight.copy_(weight.to(self.weight))
        self.log_noise_scale.copy_((0.5 * noise.log()).to(self.log_noise_scale))
        return self

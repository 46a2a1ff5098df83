"""Gaussian mixture with a discrete component latent, exact log p(x) and p(k|x).

The component k is a discrete latent site. It is trained by enumeration: the guide's q(k|x)
(``categorical`` or ``exact_posterior``) marks k for parallel enumeration, so
``objective="traceenum_elbo"`` sums the ELBO over all components exactly instead of sampling
k. The importance-sampling scorer handles k by sampling it from the guide (a discrete
proposal), never by enumeration; with ``exact_posterior`` that proposal is p(k|x) and the
estimate is exact.
"""

from __future__ import annotations

from math import prod

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints, transform_to
from torch.distributions.transforms import ReshapeTransform

from pyro_genmod._registry import register_model
from pyro_genmod.latents import LatentSite

from .base import GenerativeModel

__all__ = ["GaussianMixture"]


@register_model("gmm")
class GaussianMixture(GenerativeModel):
    r"""Gaussian mixture: k ~ Categorical(pi), x | k ~ N(mu_k, Sigma_k) with full covariances.

    log p(x) = logsumexp_k [log pi_k + log N(x; mu_k, Sigma_k)] (:meth:`exact_log_likelihood`)
    and p(k|x) is the softmax of the same terms (:meth:`exact_posterior`). Sigma_k = L_k L_k^T
    with L_k lower triangular, positive diagonal (``transform_to(lower_cholesky)``). Data of
    any shape is flattened to D = prod(shape) dimensions.

    References:
        | Pattern Recognition and Machine Learning, sec. 9.2 (Bishop, 2006)
          https://www.microsoft.com/en-us/research/publication/pattern-recognition-machine-learning/

    Arguments:
        data_shape: shape of one data point.
        num_components: C, the number of mixture components.
        init_scale: standard deviation of the random initial means (covariances start at I);
            :meth:`init_from_data` starts from a k-means clustering instead, as EM does.
    """

    def __init__(
        self, data_shape: tuple[int, ...], num_components: int = 3, init_scale: float = 1.0
    ):
        super().__init__(data_shape)
        if int(num_components) <= 0:
            raise ValueError(f"num_components must be positive, got {num_components}")
        self.num_components = int(num_components)
        support = constraints.integer_interval(0, self.num_components - 1)
        self.latent_sites = (LatentSite("k", (), support, discrete=True),)
        size = prod(self.data_shape)
        self.mixture_logits = nn.Parameter(torch.zeros(self.num_components))
        self.means = nn.Parameter(torch.randn(self.num_components, size) * float(init_scale))
        self.raw_scale_tril = nn.Parameter(torch.zeros(self.num_components, size, size))

    @property
    def scale_tril(self) -> Tensor:
        """Cholesky factors L_k of the component covariances, shape ``(C, D, D)``."""
        return transform_to(constraints.lower_cholesky)(self.raw_scale_tril)

    def prior_distributions(self) -> dict[str, dist.Distribution]:
        return {"k": dist.Categorical(logits=self.mixture_logits)}

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        k = latents["k"]
        normal = dist.MultivariateNormal(self.means[k], scale_tril=self.scale_tril[k])
        if len(self.data_shape) == 1:
            return normal
        reshape = ReshapeTransform(normal.event_shape, self.data_shape)
        return dist.TransformedDistribution(normal, reshape)

    def _log_joint(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """log pi_k + log N(x; mu_k, Sigma_k), shape ``(N, C)``, in ``dtype`` (default: the
        model's)."""
        dtype = dtype or self.means.dtype
        scale_tril = self.scale_tril.to(dtype)
        components = dist.MultivariateNormal(self.means.to(dtype), scale_tril=scale_tril)
        log_weights = torch.log_softmax(self.mixture_logits.to(dtype), dim=-1)
        return log_weights + components.log_prob(x.reshape(x.shape[0], 1, -1).to(dtype))

    def exact_log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p(x) for each point, shape ``(N,)``: computed in float64, returned in the
        model's dtype."""
        self.validate_data(x)
        return torch.logsumexp(self._log_joint(x, torch.float64), dim=-1).to(self.means.dtype)

    @torch.no_grad()
    def init_from_data(self, x: Tensor, seed: int = 0, reg_covar: float = 1e-6) -> GaussianMixture:
        """Start where scikit-learn's GaussianMixture starts EM: one k-means run on ``x`` gives hard
        assignments, and the weights, means and covariances (plus ``reg_covar`` I) are those of
        the clusters. Returns the model itself.

        Like EM, gradient training of a mixture climbs to a local optimum that depends on the
        start, so training from the same start is what makes the two comparable.

        References:
            | scikit-learn GaussianMixture (init_params="kmeans")
              https://scikit-learn.org/stable/modules/generated/sklearn.mixture.GaussianMixture.html
        """
        from sklearn.cluster import KMeans

        self.validate_data(x)
        flat = x.reshape(x.shape[0], -1).double().cpu()
        kmeans = KMeans(self.num_components, n_init=1, random_state=seed).fit(flat.numpy())
        labels = torch.as_tensor(kmeans.labels_, dtype=torch.long)
        resp = torch.nn.functional.one_hot(labels, self.num_components).double()
        counts = resp.sum(dim=0) + 1e-10
        means = resp.T @ flat / counts.unsqueeze(-1)
        centred = flat.unsqueeze(0) - means.unsqueeze(1)  # (C, N, D)
        scatter = torch.einsum("nc,cnd,cne->cde", resp, centred, centred)
        covariances = scatter / counts.reshape(-1, 1, 1)
        covariances = covariances + reg_covar * torch.eye(flat.shape[1], dtype=flat.dtype)
        tril = torch.linalg.cholesky(covariances)
        self.mixture_logits.copy_((counts / counts.sum()).log().to(self.mixture_logits))
        self.means.copy_(means.to(self.means))
        raw = transform_to(constraints.lower_cholesky).inv(tril)
        self.raw_scale_tril.copy_(raw.to(self.raw_scale_tril))
        return self

    def exact_posterior(self, x: Tensor) -> dict[str, dist.Distribution]:
        """The closed-form posterior p(k|x) (the responsibilities), batch shape ``(N,)``."""
        return {"k": dist.Categorical(logits=self._log_joint(x))}

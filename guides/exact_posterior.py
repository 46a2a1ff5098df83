"""The model's own closed-form posterior as the guide: q(z|x) = p(z|x)."""

from __future__ import annotations

from pyro.distributions import Distribution
from torch import Tensor

from pyro_genmod._registry import register_guide

from .base import Guide

__all__ = ["ExactPosterior"]


@register_guide("exact_posterior")
class ExactPosterior(Guide):
    """q(z|x) = p(z|x), computed in closed form by the model (``model.exact_posterior(x)``).

    Models with a closed-form posterior provide it: the linear-Gaussian ``ppca`` and
    ``factor_analysis`` (a Gaussian p(z|x)) and the ``gmm`` (the responsibilities p(k|x)).
    With this proposal every importance weight p(x, z) / q(z|x) equals p(x), so the
    importance-sampled estimate is the exact log p(x) for every K, with zero variance: a sharp
    test of the scorer. It has no parameters of its own; trained with it, the ELBO is log p(x)
    itself.

    References:
        | Probabilistic Principal Component Analysis (Tipping & Bishop, 1999)
          https://doi.org/10.1111/1467-9868.00196

    Arguments:
        model: a model that defines ``exact_posterior(x)``.

    Example:
        >>> import pyro_genmod as pg
        >>> model = pg.create_model("factor_analysis", (5,), latent_dim=2)
        >>> x = pg.sample(model, 20, seed=0)
        >>> ll = pg.log_likelihood(model, pg.create_guide("exact_posterior", model), x, 10)
        >>> bool((ll.per_point - model.exact_log_likelihood(x)).abs().max() < 1e-4)
        True
    """

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        if not callable(getattr(model, "exact_posterior", None)):
            return (
                "the model has no closed-form posterior p(z|x) (it defines no exact_posterior(x)); "
                "this guide fits linear-Gaussian models (ppca, factor_analysis) and the gmm; "
                "use mean_field or full_rank"
            )
        return None

    def __init__(self, model):
        super().__init__(model)
        # Held without registering it as a submodule: the model's parameters are not the guide's.
        object.__setattr__(self, "_model", model)

    def posterior(self, x: Tensor) -> dict[str, Distribution]:
        return self._model.exact_posterior(x)

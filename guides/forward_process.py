"""The fixed forward noising process of a diffusion model as its guide q(x_1..x_T | x)."""

from __future__ import annotations

import pyro
from torch import Tensor

from pyro_genmod._registry import register_guide

from .base import Guide

__all__ = ["ForwardProcess"]


@register_guide("forward_process")
class ForwardProcess(Guide):
    r"""q(x_{1:T} | x) = prod_t N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I), x_0 = s(x): fixed, no parameters.

    The encoder of a diffusion model seen as a latent-variable model (Ho et al. 2020; Kingma et
    al. 2021): it samples the chain x_1, ..., x_T forward, one site per step, with the model's
    noise schedule. Trained with it, ``trace_elbo`` is the full-chain ELBO; ``diffusion_elbo``
    computes the same bound with one step per point and closed-form KLs. As an
    importance-sampling proposal it gives ``log_likelihood`` over whole chains.

    ``encode`` returns the model's deterministic DDIM latent of x
    (:meth:`~pyro_genmod.models.diffusion.Diffusion.ddim_latent`), shape ``(N, prod(data_shape))``,
    not the mean of q (which is only a scaled copy of x).

    Fits models that define a forward process (``forward_step``): the zoo's ``diffusion``.

    References:
        | Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, 2020)
          https://arxiv.org/abs/2006.11239
        | Variational Diffusion Models (Kingma, Salimans, Poole & Ho, 2021)
          https://arxiv.org/abs/2107.00630

    Arguments:
        model: a diffusion model.
    """

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        if not callable(getattr(model, "forward_step", None)):
            return (
                "the model has no forward noising process (it defines no forward_step(x, t)); this "
                "guide fits the diffusion model only"
            )
        return None

    def __init__(self, model):
        super().__init__(model)
        # Held without registering it as a submodule: the schedule and networks are the model's.
        object.__setattr__(self, "_model", model)

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        model, values = self._model, {}
        x_t = model.signal(x)
        with pyro.plate(self.data_plate, x.shape[0]):
            for t, site in enumerate(self.latent_sites, start=1):
                x_t = values[site.name] = pyro.sample(site.name, model.forward_step(x_t, t))
        return values

    def representation(self, x: Tensor) -> Tensor:
        """What :func:`~pyro_genmod.tasks.encode` returns: the DDIM latent, flattened per point."""
        return self._model.ddim_latent(x).reshape(x.shape[0], -1)

"""VAE with the VampPrior: a mixture of variational posteriors at learned pseudo-inputs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pyro_genmod._registry import register_model
from pyro_genmod.errors import ConfigError
from pyro_genmod.priors import DiagonalGaussianMixture

from .vae import VAE

__all__ = ["DiagonalGaussianMixture", "VampPrior"]


@register_model("vamp")
class VampPrior(VAE):
    r"""VAE whose prior is the VampPrior p(z) = (1/K) sum_k q_phi(z | u_k).

    The same model as ``vae`` with ``prior="vamp"`` (the prior is
    :class:`~pyro_genmod.priors.VampMixturePrior`, shared by every model with a ``prior``
    option), kept under its own name. The K pseudo-inputs u_k are learned data-shaped
    parameters, evaluated by the prior's own encoder q_phi (same architecture as the
    ``mean_field`` guide's MLP), so p(x, z) pairs with any guide and is scored like any other.

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
        if vae_options.get("prior", "vamp") != "vamp":
            raise ConfigError(f"model 'vamp' has the VampPrior; for prior={vae_options['prior']!r} use model 'vae'")
        vae_options.pop("prior", None)
        super().__init__(data_shape, prior="vamp", num_pseudo=num_pseudo, encoder_hidden=encoder_hidden, **vae_options)

    @property
    def num_pseudo(self) -> int:
        return self.latent_prior.num_pseudo

    @property
    def pseudo_inputs(self) -> Tensor:
        return self.latent_prior.pseudo_inputs

    def components(self) -> tuple[Tensor, Tensor]:
        """Means and standard deviations of q_phi(z | u_k), each of shape ``(K, latent_dim)``."""
        return self.latent_prior.components()

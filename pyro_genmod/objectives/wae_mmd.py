"""WAE-MMD: reconstruction plus an MMD penalty between q(z) and p(z), no KL term."""

from __future__ import annotations

from pyro_genmod._registry import register_objective

from .info_vae import InfoVAE

__all__ = ["WAEMMD"]


@register_objective("wae_mmd")
class WAEMMD(InfoVAE):
    r"""WAE-MMD: -E[log p(x|z)] + lam MMD(q(z), p(z)) (Tolstikhin, Bousquet, Gelly & Schoelkopf, 2018).

    The Wasserstein autoencoder's penalized objective with the reconstruction cost
    c(x, y) = -log p(x|y) and the inverse multiquadratic kernel: :class:`InfoVAE` with alpha = 1.
    With the ``delta`` guide it is the paper's deterministic encoder; with a stochastic guide,
    its random one. The loss value is not a bound on log p(x).

    References:
        | Wasserstein Auto-Encoders (Tolstikhin, Bousquet, Gelly & Schoelkopf, 2018)
          https://arxiv.org/abs/1711.01558

    Arguments:
        num_particles: draws per point.
        lam: lambda, the weight of the MMD.
        kernel: ``"imq"`` (the paper's) or ``"rbf"``.
        kernel_scale: the kernel's length scale, in units of the prior's standard deviation.
    """

    def __init__(self, num_particles: int = 1, lam: float = 10.0, kernel: str = "imq", kernel_scale: float = 1.0):
        super().__init__(num_particles, alpha=1.0, lam=lam, kernel=kernel, kernel_scale=kernel_scale)

"""VAE whose prior is a normalizing flow on N(0, I), built from pyro.distributions.transforms."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from torch import nn

from pyro_genmod._registry import register_model
from pyro_genmod.distributions import standard_normal

from .vae import VAE

__all__ = ["FlowPrior", "FLOWS"]

FLOWS = ("maf", "spline_coupling")


@register_model("flow_prior")
class FlowPrior(VAE):
    r"""VAE with a learned prior p(z) = N(0, I) pushed through a normalizing flow.

    ``flow="maf"`` stacks Pyro's ``affine_autoregressive`` transforms used in the inverse
    direction (a masked autoregressive flow): log p(z) of a guide sample costs one network
    pass per layer, and drawing z, needed only to generate, costs d passes. ``"spline_coupling"``
    stacks rational-quadratic spline coupling layers, cheap both ways (with a random
    permutation between layers).

    References:
        | Variational Lossy Autoencoder (Chen et al., 2017) https://arxiv.org/abs/1611.02731
        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
          https://arxiv.org/abs/1705.07057
        | Neural Spline Flows (Durkan et al., 2019) https://arxiv.org/abs/1906.04032

    Arguments:
        flow: ``"maf"`` (default) or ``"spline_coupling"``.
        num_flows: number of flow layers.
        flow_hidden: hidden widths of each layer's network (default: Pyro's, 10 x latent_dim).
        **vae_options: as :class:`~pyro_genmod.models.vae.VAE` (``latent_dim`` must be >= 2).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        flow: str = "maf",
        num_flows: int = 4,
        flow_hidden: Sequence[int] | None = None,
        **vae_options,
    ):
        super().__init__(data_shape, **vae_options)
        if flow not in FLOWS:
            raise ValueError(f"unknown flow '{flow}'; choose one of {list(FLOWS)}")
        if int(num_flows) <= 0:
            raise ValueError(f"num_flows must be positive, got {num_flows}")
        if self.latent_dim < 2:
            raise ValueError("a flow prior needs latent_dim >= 2 (a 1-d flow has nothing to condition on)")
        hidden = list(flow_hidden) if flow_hidden is not None else None
        d = self.latent_dim
        layers: list[nn.Module] = []
        for _ in range(int(num_flows)):
            if flow == "maf":  # AutoRegressiveNN draws its own random variable order
                layers.append(T.affine_autoregressive(d, hidden_dims=hidden))
            else:
                layers.append(T.spline_coupling(d, hidden_dims=hidden))
        self.flow_kind = flow
        self.flows = nn.ModuleList(layers)
        # Coupling layers transform half the dimensions; permute between them (a saved buffer).
        self.register_buffer("permutations", torch.stack([torch.randperm(d) for _ in layers]))

    def prior_distributions(self) -> dict[str, dist.Distribution]:
        base = standard_normal(self.latent_dim, like=self._zero)
        if self.flow_kind == "maf":
            parts = [t.inv for t in self.flows]
        else:
            parts = []
            for i, layer in enumerate(self.flows):
                parts += [T.Permute(self.permutations[i])] if i > 0 else []
                parts.append(layer)
        return {"z": dist.TransformedDistribution(base, parts)}

"""A masked autoregressive flow over the latent codes, trained by maximum likelihood (Pyro)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from torch import Tensor, nn

from pyro_genmod.errors import ConfigError

from .base import LatentSampler, register_sampler

__all__ = ["MAFSampler"]


@register_sampler("maf")
class MAFSampler(LatentSampler):
    """A MAF: ``num_flows`` affine autoregressive layers with reversing permutations between them.

    The codes are standardized (per-dimension mean and standard deviation, an affine last layer),
    then the flow is fitted by maximizing the log-likelihood of the codes with Adam. Each layer is
    Pyro's ``affine_autoregressive`` used in its MAF direction (``.inv``): scoring a code takes one
    pass, drawing one takes D passes.

    References:
        | Masked Autoregressive Flow for Density Estimation (Papamakarios, Pavlakou & Murray,
          2017) https://arxiv.org/abs/1705.07057

    Arguments:
        num_flows: autoregressive layers.
        hidden: width of the MADE network in each layer (default ``4 * D``).
        epochs: passes over the codes.
        batch_size: codes per Adam step.
        lr: Adam's learning rate.
    """

    def __init__(self, num_flows: int = 4, hidden: int | None = None, epochs: int = 100, batch_size: int = 256,
                 lr: float = 1e-3):
        super().__init__()
        for name, value in (("num_flows", num_flows), ("epochs", epochs), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ConfigError(f"sampler 'maf' needs {name} >= 1, got {value}")
        if hidden is not None and int(hidden) < 1:
            raise ConfigError(f"sampler 'maf' needs hidden >= 1, got {hidden}")
        if not lr > 0:
            raise ConfigError(f"sampler 'maf' needs lr > 0, got {lr}")
        self.num_flows, self.hidden = int(num_flows), hidden
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.losses: list[float] = []

    def _fit(self, codes: Tensor) -> None:
        d = codes.shape[1]
        hidden = int(self.hidden) if self.hidden is not None else 4 * d
        self.layers = nn.ModuleList(T.affine_autoregressive(d, hidden_dims=[hidden, hidden]) for _ in range(self.num_flows))
        reverse = torch.arange(d - 1, -1, -1)
        parts: list = []
        for i, layer in enumerate(self.layers):
            parts.append(layer.inv)  # MAF: the made network conditions on the code, so log_prob is one pass
            if i < self.num_flows - 1:
                parts.append(T.Permute(reverse))
        loc, scale = codes.mean(0), codes.std(0).clamp_min(1e-6)
        self.transforms = [*parts, T.AffineTransform(loc, scale, event_dim=1)]
        optimizer = torch.optim.Adam(self.layers.parameters(), lr=self.lr)
        n = codes.shape[0]
        for _ in range(self.epochs):
            total = 0.0
            for rows in torch.randperm(n).split(self.batch_size):
                loss = -self.distribution().log_prob(codes[rows]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
            self.losses.append(total / n)
        self.layers.eval()

    def distribution(self) -> dist.TransformedDistribution:
        """The fitted flow as a Pyro distribution over codes of shape ``(D,)``."""
        base = dist.Normal(torch.zeros(self.dim), torch.ones(self.dim)).to_event(1)
        return dist.TransformedDistribution(base, self.transforms)

    def _sample(self, num_samples: int) -> Tensor:
        return self.distribution().sample((num_samples,))

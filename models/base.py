"""Contract: a model is a Pyro model p(z) p(x|z) that declares its latent sites."""

from __future__ import annotations

import pyro
import torch
from pyro.distributions import Distribution
from torch import Tensor, nn

from pyro_genmod.errors import DataError
from pyro_genmod.latents import LatentSite

__all__ = ["GenerativeModel"]


class GenerativeModel(nn.Module):
    """A latent-variable model p(x, z) = p(z) p(x|z) written as a Pyro model.

    Subclasses set ``latent_sites`` and implement :meth:`prior` (sample every latent site) and
    :meth:`likelihood` (the distribution of the observed site ``"x"`` given the latents). Both
    run inside ``pyro.plate("data", N)`` at dim -1, so every site is local to a data point.
    Called without data, the model draws ``num_samples`` new points.
    """

    registry_name = "model"
    latent_sites: tuple[LatentSite, ...] = ()
    max_plate_nesting = 1

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        if not data_shape or any(int(d) <= 0 for d in data_shape):
            raise ValueError(f"data shape must be non-empty and positive, got {tuple(data_shape)}")
        self.data_shape = tuple(int(d) for d in data_shape)
        self.init_kwargs: dict = {}

    def forward(self, x: Tensor | None = None, num_samples: int | None = None) -> Tensor:
        num = x.shape[0] if x is not None else num_samples
        if num is None:
            raise ValueError("pass data x or num_samples")
        with pyro.plate("data", num):
            latents = self.prior()
            return pyro.sample("x", self.likelihood(latents), obs=x)

    def prior(self) -> dict[str, Tensor]:
        """Sample every latent site from p(z); return ``{site name: value}``."""
        raise NotImplementedError

    def likelihood(self, latents: dict[str, Tensor]) -> Distribution:
        """p(x | z) with event shape ``data_shape``."""
        raise NotImplementedError

    def validate_data(self, x: Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` naming the problem if ``x`` cannot be scored by this model."""
        if not isinstance(x, Tensor):
            raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise DataError(f"{what} is empty; pass at least one data point")
        if tuple(x.shape[1:]) != self.data_shape:
            raise DataError(
                f"{what} has point shape {tuple(x.shape[1:])} but model "
                f"'{self.registry_name}' was built for {self.data_shape}; rebuild the model "
                f"for this data with create_model(name, data)"
            )
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0])
            raise DataError(f"{what} has NaN or inf values, first in row {row}")
        problem = getattr(self, "observation", None)
        problem = problem.data_problem(x) if problem is not None else None
        if problem:
            raise DataError(f"{what}: {problem}")

"""Contract: an ex-post sampler is a density over latent codes, fitted to codes and drawn from."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_genmod._registry import Registry
from pyro_genmod.checks import check_positive_int
from pyro_genmod.errors import DataError

__all__ = ["SAMPLERS", "LatentSampler", "list_samplers", "register_sampler"]

SAMPLERS = Registry("sampler", "pyro_genmod.samplers")


def register_sampler(name: str):
    """Class decorator: make a :class:`LatentSampler` subclass available as ``name``."""
    return SAMPLERS.register(name)


def list_samplers() -> list[str]:
    """``"prior"`` (p(z) itself, the default of :func:`~pyro_genmod.tasks.sample`) and the
    registered ex-post samplers."""
    return ["prior", *SAMPLERS.names()]


class LatentSampler:
    """A density over flat latent codes of shape ``(N, D)``, fitted to a model's posterior means.

    Ghosh et al. (2020) and Dai & Wipf (2019) observe that the aggregate posterior
    q(z) = (1/N) sum_n q(z|x_n) of a trained VAE need not match p(z): regions of the prior that
    no training code visits decode to poor samples. Fitting a density to the codes E_q[z|x_n]
    and drawing z from it ("ex-post") samples where the decoder was trained.

    :meth:`fit` checks the codes and calls ``_fit``; :meth:`sample` draws with torch's generator
    (so :func:`~pyro_genmod.seeding.seeded` makes it reproducible) through ``_sample``.
    ``site_shapes`` (set by :func:`~pyro_genmod.tasks.fit_sampler`) records the model's latent
    sites the code columns belong to, in order.
    """

    registry_name = "sampler"

    def __init__(self) -> None:
        self.dim: int | None = None
        self.site_shapes: dict[str, tuple[int, ...]] = {}

    def fit(self, codes: Tensor) -> LatentSampler:
        if not isinstance(codes, Tensor) or codes.ndim != 2 or codes.shape[0] < 2:
            got = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise DataError(f"sampler '{self.registry_name}' fits a tensor of codes of shape (N >= 2, D), got {got}")
        if not torch.isfinite(codes).all():
            raise DataError(f"sampler '{self.registry_name}': the codes hold NaN or inf values")
        self.dim = int(codes.shape[1])
        self._fit(codes.detach().to(torch.get_default_dtype()))
        return self

    def sample(self, num_samples: int) -> Tensor:
        """``num_samples`` codes, shape ``(num_samples, D)``."""
        check_positive_int("the number of samples", num_samples)
        if self.dim is None:
            raise DataError(f"sampler '{self.registry_name}' is not fitted; call fit(codes) first")
        with torch.no_grad():
            return self._sample(num_samples)

    def _fit(self, codes: Tensor) -> None:
        raise NotImplementedError

    def _sample(self, num_samples: int) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = f"D={self.dim}" if self.dim is not None else "not fitted"
        return f"{type(self).__name__}({state})"

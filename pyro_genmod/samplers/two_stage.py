"""The two-stage VAE: a second, small VAE fitted to the latent codes, sampled through its decoder."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pyro_genmod.errors import ConfigError
from pyro_genmod.factories import create_guide, create_model
from pyro_genmod.train import fit

from .base import LatentSampler, register_sampler

__all__ = ["TwoStageSampler"]


@register_sampler("two_stage")
class TwoStageSampler(LatentSampler):
    """A second VAE in latent space: codes z are data for u ~ N(0, I), z ~ N(g(u), diag(σ²)).

    The codes are standardized, then the zoo's own ``vae`` (Gaussian likelihood with a learned σ
    per dimension, as Dai & Wipf's learned γ) with a ``mean_field`` guide is fitted to them with
    :func:`~pyro_genmod.train.fit`. A draw is u ~ N(0, I) decoded to the mean g(u), as in the
    paper: the first VAE's decoder then turns the code into a point. The second stage's latent
    space matches its aggregate posterior to N(0, I) better than the first did, because codes of
    low intrinsic dimension are easier to fit than images.

    References:
        | Diagnosing and Enhancing VAE Models (Dai & Wipf, 2019) https://arxiv.org/abs/1903.05789

    Arguments:
        latent_dim: size of u (default: D, the codes' size, as in the paper).
        hidden: hidden widths of the second VAE's encoder and decoder.
        epochs, batch_size, lr: :func:`~pyro_genmod.train.fit`'s options for the second stage.
        seed: its training seed.
    """

    def __init__(self, latent_dim: int | None = None, hidden: Sequence[int] = (256, 256), epochs: int = 100,
                 batch_size: int = 128, lr: float = 1e-3, seed: int = 0):
        super().__init__()
        if latent_dim is not None and int(latent_dim) < 1:
            raise ConfigError(f"sampler 'two_stage' needs latent_dim >= 1, got {latent_dim}")
        self.latent_dim, self.hidden = latent_dim, tuple(int(h) for h in hidden)
        self.options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}

    def _fit(self, codes: Tensor) -> None:
        d = codes.shape[1]
        self.loc, self.scale = codes.mean(0), codes.std(0).clamp_min(1e-6)
        standard = (codes - self.loc) / self.scale
        self.model = create_model("vae", (d,), latent_dim=self.latent_dim or d, hidden=self.hidden,
                                  likelihood="gaussian", activation="relu")
        self.guide = create_guide("mean_field", self.model, hidden=self.hidden, activation="relu")
        self.result = fit(self.model, self.guide, standard, progress=False, **self.options)

    def _sample(self, num_samples: int) -> Tensor:
        prior = self.model.prior_distributions()["z"]
        u = prior.sample((num_samples,))
        return self.model.likelihood({"z": u}).mean * self.scale + self.loc

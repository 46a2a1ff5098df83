"""Conditional VAE: generates x given a class label y; marginalizes y when it is not given."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_genmod._registry import register_model
from pyro_genmod.nn import join_label

from .vae import VAE

__all__ = ["ConditionalVAE"]


@register_model("cvae")
class ConditionalVAE(VAE):
    r"""Conditional VAE: z ~ N(0, I), x ~ p(x | decoder(z, one_hot(y))) for a given label y.

    ``forward(x, num_samples, y)``: with labels (``fit`` passes the training labels; pass
    ``y`` to :func:`~pyro_genmod.tasks.sample` to draw given classes) the likelihood is
    p(x | z, y). Without them, y is summed out exactly under a uniform p(y):
    p(x | z) = (1/C) sum_y p(x | z, y), so log p(x), the validation ELBO and unconditional
    samples are defined as for any model. Guides see x alone (Sohn et al.'s q(z|x, y) is
    replaced by q(z|x), which is valid but wider); the latent site is z only.

    References:
        | Learning Structured Output Representation using Deep Conditional Generative Models
          (Sohn, Lee & Yan, 2015) https://papers.nips.cc/paper/5775

    Arguments:
        num_classes: C, the number of labels.
        **vae_options: as :class:`~pyro_genmod.models.vae.VAE`.
    """

    uses_labels = True

    def __init__(self, data_shape: tuple[int, ...], num_classes: int = 10, **vae_options):
        super().__init__(data_shape, **vae_options)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.decoder = self.build_decoder(self.latent_dim + self.num_classes)

    def forward(self, x: Tensor | None = None, num_samples: int | None = None, y: Tensor | None = None) -> Tensor:
        num = x.shape[0] if x is not None else num_samples
        if num is None:
            raise ValueError("pass data x or num_samples")
        if y is not None:
            self.validate_labels(y, num)
        with pyro.plate("data", num):
            latents = self.prior()
            return pyro.sample("x", self.likelihood(latents, y), obs=x)

    def likelihood(self, latents: dict[str, Tensor], y: Tensor | None = None) -> dist.Distribution:
        z = latents["z"]
        if y is not None:
            return self.observation(self.decoder(join_label(z, y, self.num_classes)))
        every_label = torch.arange(self.num_classes, device=z.device)
        out = self.decoder(join_label(z.unsqueeze(-2), every_label, self.num_classes))  # (..., C, out)
        uniform = dist.Categorical(logits=z.new_zeros(self.num_classes))
        return dist.MixtureSameFamily(uniform, self.observation(out))


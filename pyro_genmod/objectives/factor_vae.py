"""FactorVAE: the ELBO plus a total-correlation penalty estimated by a discriminator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_genmod._registry import register_objective
from pyro_genmod.errors import ConfigError
from pyro_genmod.nn import mlp
from pyro_genmod.state_io import load_optimizer_tensors, load_state, optimizer_tensors

from ._aggregate import scored_draws
from .base import LossPair, Objective

__all__ = ["FactorVAE", "permute_dims"]


def permute_dims(z: Tensor) -> Tensor:
    """Each coordinate of the rows of ``z`` (n, D) shuffled across rows on its own: draws from
    prod_d q(z_d) when the rows are draws from q(z)."""
    order = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return z.gather(0, order)


@register_objective("factor_vae")
class FactorVAE(Objective):
    r"""FactorVAE: -ELBO + gamma TC, TC = KL(q(z) || prod_d q(z_d)) by the density-ratio trick
    (Kim & Mnih, 2018).

    A discriminator D(z) is trained to tell draws of q(z) (the batch's draws from q(z|x)) from
    draws of prod_d q(z_d) (the same draws with each coordinate shuffled across the batch,
    :func:`permute_dims`); its logit log D / (1 - D) then estimates log q(z) / prod_d q(z_d),
    whose mean over the draws is the total correlation.

    How it fits the one-loss training step: the objective owns the discriminator and its Adam
    optimizer (the paper's: lr 1e-4, betas (0.5, 0.9)). Each call with gradients on, it
    (1) computes the loss for the model and guide, the ELBO's plus gamma times the summed
    logits, with a copy of the discriminator's parameters held fixed, and (2) takes one discriminator
    step on the cross-entropy of the draws (detached) against their shuffled copies. The
    training loop's optimizer never sees the discriminator, which is built at the first call
    for the latents' width. The loss value is the penalized objective summed over the batch.

    Checkpoints: :meth:`state_tensors` gives the discriminator's parameters
    (``discriminator.NAME``) and its Adam state (``adam.N.step``, ``adam.N.exp_avg``,
    ``adam.N.exp_avg_sq``), which ``fit(checkpoint=...)`` stores as ``objective.*`` safetensors;
    :meth:`load_state_tensors` rebuilds the discriminator for the saved width (drawing no random
    numbers) before the first call, so a resumed fit continues bit for bit. A checkpoint
    without them (written before pyro-genmod saved them) is refused rather than resumed with a
    new discriminator.

    Data parallelism: refused (``distributed=True`` raises :class:`ConfigError`). The
    discriminator is not synchronized across ranks: each would train its own on its shard.

    Pairs: every latent site continuous and reparameterized; the sites are joined into one
    vector.

    References:
        | Disentangling by Factorising (Kim & Mnih, 2018) https://arxiv.org/abs/1802.05983

    Arguments:
        num_particles: draws per point.
        gamma: the weight of the total correlation.
        hidden: the discriminator's hidden-layer widths (the paper's has six of 1000).
        lr: the discriminator's learning rate.
    """

    def __init__(self, num_particles: int = 1, gamma: float = 10.0, hidden: Sequence[int] = (256, 256),
                 lr: float = 1e-4):
        super().__init__(num_particles)
        if not math.isfinite(gamma) or gamma < 0:
            raise ConfigError(f"objective 'factor_vae' option 'gamma' must be finite and >= 0, got {gamma}")
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"objective 'factor_vae' option 'lr' must be positive, got {lr}")
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ConfigError(f"objective 'factor_vae' option 'hidden' must be positive integers, got {hidden!r}")
        self.gamma, self.hidden, self.lr = float(gamma), tuple(hidden), float(lr)
        self.discriminator: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def _build(self, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.discriminator = mlp(width, self.hidden, 1, "relu").to(device=device, dtype=dtype)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.9))

    def _discriminator(self, z: Tensor) -> nn.Module:
        if self.discriminator is None or self.discriminator[0].in_features != z.shape[-1]:
            self._build(z.shape[-1], z.device, z.dtype)
        elif (weight := self.discriminator[0].weight).device != z.device or weight.dtype != z.dtype:
            # restored on the CPU: move it, and its Adam state with it (loading casts the state to the parameters)
            self.discriminator.to(device=z.device, dtype=z.dtype)
            self.optimizer.load_state_dict(self.optimizer.state_dict())
        return self.discriminator

    def check_data_parallel(self) -> None:
        raise ConfigError(
            "objective 'factor_vae' cannot train with distributed=True: its discriminator is not "
            "synchronized across ranks; train it in one process"
        )

    def state_tensors(self) -> dict[str, Tensor]:
        """The discriminator's parameters and Adam state (empty before the first call)."""
        if self.discriminator is None:
            return {}
        adam, _ = optimizer_tensors(self.optimizer)  # Adam keeps only tensors; its options are this objective's
        return {**{f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()},
                **{f"adam.{k}": v for k, v in adam.items()}}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Rebuild the discriminator and its Adam optimizer from :meth:`state_tensors`' output."""
        groups: dict[str, dict[str, Tensor]] = {"discriminator": {}, "adam": {}}
        for name, value in tensors.items():
            group, _, key = name.partition(".")
            if group not in groups:
                raise ConfigError(f"objective 'factor_vae' has no state tensor '{name}' (it keeps discriminator.* and adam.*)")
            groups[group][key] = value
        first = groups["discriminator"].get("0.weight")
        if first is None:
            raise ConfigError(
                "objective 'factor_vae' was given no discriminator (no discriminator.0.weight), as in a "
                "checkpoint written before pyro-genmod saved it; start the run again"
            )
        device = self.discriminator[0].weight.device if self.discriminator is not None else torch.device("cpu")
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: leave the RNG as it was
            self._build(first.shape[1], device, first.dtype)
        load_state(self.discriminator, groups["discriminator"], "objective 'factor_vae'",
                   "build it with the options it was saved with (hidden=...)")
        load_optimizer_tensors(self.optimizer, groups["adam"], {"param_groups": self.optimizer.state_dict()["param_groups"], "scalars": {}})

    def discriminator_loss(self, z: Tensor) -> Tensor:
        """Cross-entropy of D on the draws ``z`` (n, D), label 1, and their shuffled copies, label 0."""
        discriminator = self._discriminator(z)
        logits = discriminator(torch.cat([z, permute_dims(z)])).squeeze(-1)
        labels = torch.cat([torch.ones(z.shape[0]), torch.zeros(z.shape[0])]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        draws = scored_draws(model, guide, x, self.num_particles, self.name)
        z = draws.z.reshape(-1, draws.z.shape[-1])
        discriminator = self._discriminator(z)
        fixed = {name: p.detach().clone() for name, p in discriminator.named_parameters()}  # its step below is in place
        tc = torch.func.functional_call(discriminator, fixed, (z,)).sum() / self.num_particles
        loss = draws.negative_elbo + self.gamma * tc
        if torch.is_grad_enabled():
            self.optimizer.zero_grad(set_to_none=True)
            self.discriminator_loss(z.detach()).backward()
            self.optimizer.step()
        return loss, float(loss.detach())

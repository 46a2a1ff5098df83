"""Non-amortized guide: free variational parameters per data point, optimized at evaluation time."""

from __future__ import annotations

import math

import torch
from pyro.distributions import Distribution
from torch import Tensor, nn

from pyro_genmod._registry import create_guide, register_guide
from pyro_genmod.errors import ConfigError
from pyro_genmod.importance import log_importance_weights

from .base import AmortizedGuide, Guide
from .mean_field import MeanField

__all__ = ["LocalGuide", "fit_local"]


@register_guide("local")
class LocalGuide(Guide):
    """Non-amortized q(z|x_n) with its own variational parameters for every refined point x_n.

    The family (``mean_field`` by default; any amortized guide) fixes the form of q; the
    parameters a point gets are those the family's encoder would output, or zeros with
    ``init="scratch"``, until :meth:`refine` optimizes them for that point alone with the model
    held fixed. The ELBO of refined points is ELBO_local, and ELBO_local - ELBO_amortized is the
    amortization gap of Cremer et al. Points are recognized by their exact values. Before any
    refinement the guide behaves as its family (amortized start) or as a fixed q (scratch).

    References:
        | Inference Suboptimality in Variational Autoencoders (Cremer, Li & Duvenaud, 2018)
          https://arxiv.org/abs/1801.03558

    Arguments:
        model: the model whose latent sites to cover.
        family: the name of an amortized guide, or a (trained) amortized guide for ``model``.
        init: ``"amortized"`` starts each point at the family's encoder output, ``"scratch"``
            at all-zero variational parameters (mean-field: loc 0, scale log 2).
        **family_options: options of the family when it is given by name.

    Example:
        >>> import pyro_genmod as pg
        >>> from pyro_genmod.guides.local import fit_local
        >>> model = pg.create_model("vae", (1, 8, 8), latent_dim=2)
        >>> amortized = pg.create_guide("mean_field", model)
        >>> x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.5))
        >>> local = fit_local(model, x, amortized, steps=5)
        >>> len(local.history), local.num_points
        (5, 3)
    """

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        return MeanField.unsupported_reason(model)

    def __init__(self, model, family: str | AmortizedGuide = "mean_field", init: str = "amortized", **family_options):
        super().__init__(model)
        if init not in ("amortized", "scratch"):
            raise ValueError(f"init must be 'amortized' or 'scratch', got {init!r}")
        if isinstance(family, str):
            family = create_guide(family, model, **family_options)
        elif family_options:
            raise ValueError("family options apply only when the family is given by name")
        if not isinstance(family, AmortizedGuide):
            raise ValueError(
                f"the family must be an amortized guide (mean_field, full_rank, low_rank, iaf, ...), "
                f"got '{getattr(family, 'registry_name', type(family).__name__)}'"
            )
        self.family, self.init = family, init
        self.is_point_estimate = family.is_point_estimate
        object.__setattr__(self, "_model", model)  # not a submodule: its parameters are not the guide's
        device = next(family.parameters()).device
        self.local_params = nn.Parameter(torch.zeros(0, sum(family.sizes), device=device))
        self.register_buffer("points", torch.zeros(0, *self.data_shape, device=device))
        self._rows: dict[bytes, int] = {}
        self.history: list[float] = []

    @property
    def num_points(self) -> int:
        """How many distinct points have their own parameters."""
        return self.local_params.shape[0]

    @staticmethod
    def _keys(x: Tensor) -> list[bytes]:
        rows = x.detach().flatten(1).to("cpu", torch.float32).contiguous().numpy()
        return [row.tobytes() for row in rows]

    def initial_parameters(self, x: Tensor) -> Tensor:
        """Where a point's parameters start: the family's encoder output, or zeros."""
        if self.init == "scratch":
            return self.local_params.new_zeros(x.shape[0], self.local_params.shape[1])
        return self.family.variational_parameters(x)

    def variational_parameters(self, x: Tensor) -> Tensor:
        """Each point's own parameters where it was refined, its initial parameters elsewhere."""
        rows = torch.tensor([self._rows.get(key, -1) for key in self._keys(x)], device=self.local_params.device)
        start = self.initial_parameters(x)
        if not bool((rows >= 0).any()):
            return start
        own = self.local_params[rows.clamp(min=0)]
        return torch.where((rows >= 0)[:, None], own, start)

    def posterior(self, x: Tensor) -> dict[str, Distribution]:
        return self.family.posterior_from(self.variational_parameters(x))

    def add_points(self, x: Tensor) -> None:
        """Give each new point of ``x`` its own parameters, set to where it starts."""
        new = {}
        for i, key in enumerate(self._keys(x)):
            if key not in self._rows and key not in new:
                new[key] = i
        if not new:
            return
        index = torch.tensor(list(new.values()), device=x.device)
        with torch.no_grad():
            start = self.initial_parameters(x[index]).to(self.local_params)
        for offset, key in enumerate(new):
            self._rows[key] = self.num_points + offset
        self.local_params = nn.Parameter(torch.cat([self.local_params.detach(), start]))
        self.points = torch.cat([self.points, x[index].to(self.points)])

    def refine(self, x: Tensor, steps: int = 200, lr: float = 1e-2, num_particles: int = 1, seed: int | None = None) -> list[float]:
        """Maximize each point's ELBO over its own parameters, the model and family fixed.

        Adam with the learning rate decayed linearly to zero, so that the last steps average
        out the noise of the single-draw gradients rather than jitter around the optimum.

        Arguments:
            x: the points, shape ``(N, *data_shape)``.
            steps: Adam steps.
            lr: Adam learning rate.
            num_particles: draws per point in each step's ELBO estimate.
            seed: seeds the draws (the global RNG is left untouched).

        Returns:
            The mean negative ELBO per point at each step (also appended to ``history``).
        """
        for name, value in (("steps", steps), ("num_particles", num_particles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"the learning rate must be a positive number, got {lr!r}")
        self._model.validate_data(x, "points to refine")
        self.add_points(x)
        optimizer = torch.optim.Adam([self.local_params], lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
        losses = []
        with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else [x.device]):
            if seed is not None:
                torch.manual_seed(seed)
            for _ in range(steps):
                loss = -log_importance_weights(self._model, self, x, num_particles).mean(0).sum()
                (self.local_params.grad,) = torch.autograd.grad(loss, [self.local_params])
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()) / x.shape[0])
        self.history += losses
        return losses

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a saved guide may hold a different number of refined points: resize, then re-index
        points = state_dict.get(prefix + "points")
        if points is not None:
            self.local_params = nn.Parameter(self.local_params.new_zeros(points.shape[0], self.local_params.shape[1]))
            self.points = points.new_zeros(points.shape).to(self.points.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._rows = {key: i for i, key in enumerate(self._keys(self.points))}


def fit_local(
    model,
    x: Tensor,
    guide: AmortizedGuide | None = None,
    *,
    family: str = "mean_field",
    steps: int = 200,
    lr: float = 1e-2,
    num_particles: int = 1,
    seed: int | None = None,
    **family_options,
) -> LocalGuide:
    """A local guide for the points ``x``, optimized per point with ``model`` held fixed.

    Starts from ``guide``'s encoder output (an amortized start, same family) when a guide is
    given, otherwise from scratch in ``family``. The refined guide scores ``x`` like any guide:
    ``log_likelihood(model, local, x)`` gives ELBO_local and an IS estimate with q_local.

    Arguments:
        model: a trained model (its parameters are not changed).
        x: the points, shape ``(N, *data_shape)``.
        guide: an amortized guide to start from, or ``None`` to start from scratch.
        family: the family when starting from scratch.
        steps, lr, num_particles, seed: see :meth:`LocalGuide.refine`.
        **family_options: options of ``family`` when starting from scratch.
    """
    try:
        if guide is not None:
            local = LocalGuide(model, family=guide, init="amortized", **family_options)
        else:
            local = LocalGuide(model, family=family, init="scratch", **family_options)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"local guide: {error}") from None
    local.refine(x, steps=steps, lr=lr, num_particles=num_particles, seed=seed)
    return local

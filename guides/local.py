"""Non-amortized guide: free variational parameters per data point, optimized at evaluation time."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import Distribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_genmod._registry import register_guide
from pyro_genmod.densities import log_densities
from pyro_genmod.errors import ConfigError
from pyro_genmod.factories import create_guide
from pyro_genmod.seeding import seeded

from .base import AmortizedGuide, Guide
from .mean_field import MeanField

__all__ = ["LocalGuide", "fit_local", "LocalParameters"]


class _StickingTheLanding(dist.TorchDistribution):
    """Draws through ``q`` (reparameterized) but scores with ``fixed``, a copy of ``q`` whose
    parameters are detached: the score-function term of the ELBO gradient, zero in expectation,
    is dropped, so the gradient vanishes when q equals the posterior."""

    has_rsample = True
    arg_constraints: dict = {}

    def __init__(self, q: dist.Distribution, fixed: dist.Distribution):
        self.q, self.fixed = q, fixed
        super().__init__(q.batch_shape, q.event_shape, validate_args=False)

    @property
    def support(self):
        return self.q.support

    def expand(self, batch_shape, _instance=None):
        return _StickingTheLanding(self.q.expand(batch_shape), self.fixed.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        return self.q.rsample(sample_shape)

    def log_prob(self, value):
        return self.fixed.log_prob(value)


class LocalParameters(nn.Module):
    """An amortized guide's family with free per-point parameters instead of its encoder.

    ``params`` has one row per data point, in the layout of ``guide.variational_parameters``;
    the flows or other global parts of ``guide`` are shared and held fixed.

    Arguments:
        guide: an :class:`AmortizedGuide` (anything with ``variational_parameters(x)`` and
            ``posterior_from(params)``).
        params: per-point parameters, shape ``(N, P)``.
        sticking_the_landing: score draws with detached parameters (for optimizing).
    """

    is_point_estimate = False

    def __init__(self, guide, params: Tensor, sticking_the_landing: bool = False):
        super().__init__()
        object.__setattr__(self, "_guide", guide)  # not a submodule: its weights are not ours
        self.params = params
        self.latent_sites = guide.latent_sites
        self.registry_name = f"local {getattr(guide, 'registry_name', type(guide).__name__)}"
        self.sticking_the_landing = sticking_the_landing

    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        if x.shape[0] != self.params.shape[0]:
            raise ValueError(f"{self.params.shape[0]} points' parameters for {x.shape[0]} points")
        posterior = self._guide.posterior_from(self.params)
        if self.sticking_the_landing:
            fixed = self._guide.posterior_from(self.params.detach())
            posterior = {k: _StickingTheLanding(q, fixed[k]) for k, q in posterior.items()}
        with pyro.plate(getattr(self._guide, "data_plate", "data"), x.shape[0]):
            return {name: pyro.sample(name, q) for name, q in posterior.items()}


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

    def refine(
        self, x: Tensor, steps: int = 500, lr: float = 0.05, num_particles: int = 16, seed: int | None = None,
        max_rows: int = 65536, progress: bool = False,
    ) -> list[float]:
        """Maximize each point's ELBO over its own parameters, the model and family fixed.

        Adam on the ELBO with ``num_particles`` draws per point and a cosine-decayed learning
        rate, using the sticking-the-landing gradient (draws scored with detached parameters, so
        the gradient vanishes at the optimum) where the family can score draws made with other
        parameters (not the planar, radial and Sylvester flows). Points are optimized in chunks
        of ``max_rows // num_particles``; they are independent, so each chunk's sum of ELBOs has
        each point's own gradient.

        References:
            | Inference Suboptimality in Variational Autoencoders (Cremer, Li & Duvenaud, 2018)
              https://arxiv.org/abs/1801.03558
            | Sticking the Landing (Roeder, Wu & Duvenaud, 2017) https://arxiv.org/abs/1703.09194

        Arguments:
            x: the points, shape ``(N, *data_shape)``.
            steps: Adam steps.
            lr: Adam's initial learning rate.
            num_particles: draws per point in each step's ELBO estimate.
            seed: seeds the draws (the global RNG is left untouched).
            max_rows: (point, particle) rows per chunk.
            progress: a tqdm bar over the steps.

        Returns:
            The mean negative ELBO per point at each step (also appended to ``history``).
        """
        for name, value in (("steps", steps), ("num_particles", num_particles), ("max_rows", max_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"the learning rate must be a positive number, got {lr!r}")
        self._model.validate_data(x, "points to refine")
        self.add_points(x)
        rows = torch.tensor([self._rows[key] for key in self._keys(x)], device=self.local_params.device)
        stl = not getattr(self.family, "scores_own_samples_only", False)
        chunk = max(1, max_rows // num_particles)
        losses = torch.zeros(steps, dtype=torch.float64)
        with seeded(seed):
            for start in range(0, x.shape[0], chunk):
                xc, rc = x[start : start + chunk], rows[start : start + chunk]
                params = self.local_params[rc].detach().clone().requires_grad_(True)
                local = LocalParameters(self.family, params, sticking_the_landing=stl)
                optimizer = torch.optim.Adam([params], lr=lr)
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
                for step in tqdm(range(steps), desc="local ELBO", disable=not progress, leave=False):
                    log_p, log_q = log_densities(self._model, local, xc, num_particles, per_point=True)
                    loss = -(log_p - log_q).expand(num_particles, xc.shape[0]).mean(0).sum()
                    (params.grad,) = torch.autograd.grad(loss, [params])
                    optimizer.step()
                    schedule.step()
                    losses[step] += float(loss.detach())
                with torch.no_grad():
                    self.local_params[rc] = params.detach()
        history = (losses / x.shape[0]).tolist()
        self.history += history
        return history

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
    steps: int = 500,
    lr: float = 0.05,
    num_particles: int = 16,
    seed: int | None = None,
    max_rows: int = 65536,
    progress: bool = False,
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
        steps, lr, num_particles, seed, max_rows, progress: see :meth:`LocalGuide.refine`.
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
    local.refine(x, steps=steps, lr=lr, num_particles=num_particles, seed=seed, max_rows=max_rows, progress=progress)
    return local

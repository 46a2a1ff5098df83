"""Contract: a model is a Pyro model p(z) p(x|z) that declares its latent sites."""

from __future__ import annotations

import pyro
import torch
from pyro.distributions import Distribution
from torch import Tensor, nn

from pyro_genmod.checks import check_points
from pyro_genmod.errors import DataError
from pyro_genmod.latents import LatentSite
from pyro_genmod.markers import contract_default

__all__ = ["GenerativeModel"]


class GenerativeModel(nn.Module):
    """A latent-variable model p(x, z) = p(z) p(x|z) written as a Pyro model.

    Subclasses set ``latent_sites`` and implement :meth:`prior_distributions` (p(z) site by
    site, for sites independent a priori) or :meth:`prior` (sample every latent site, for a
    hierarchy), and :meth:`likelihood` (the distribution of the observed site ``"x"`` given the
    latents). Both
    run inside ``pyro.plate("data", N)`` at dim -1, so every site is local to a data point.
    Called without data, the model draws ``num_samples`` new points.

    Labels: a model with ``uses_labels = True`` (``cvae``, ``m2``) also takes ``y``, a long
    tensor of shape ``(N,)`` of class indices, with -1 marking a point whose label is unknown
    where the model allows it. :func:`~pyro_genmod.train.fit` passes ``data.train_labels`` to
    such a model, and to its guide when the guide's ``forward`` has a ``y`` argument
    (:class:`LabelFeed`); guides without one see x alone. Scoring and ``evaluate_elbo`` call
    the model without labels, so a label-using model must also define p(x) on its own
    (marginalizing y); :func:`~pyro_genmod.tasks.sample` takes ``y`` to draw given classes.
    A model with ``has_log_likelihood = False`` (``ae``, improper prior) has no log p(x):
    :func:`~pyro_genmod.importance.log_likelihood` refuses it.

    ``default_guide`` names the guide used when none is chosen (``genmod train`` without
    ``--guide``, ``run_experiment(..., guide_name=None)``): a model that needs its own inference
    network (``m2``) names it; ``None`` means the library's default, ``mean_field``.
    ``default_objective`` likewise names the objective ``fit`` uses when none is chosen
    (``diffusion_elbo`` for ``diffusion``; ``None``: ``trace_elbo``). ``supported_guides``
    restricts the registered guides that pair with the model (``None``: any guide that covers
    its latent sites); :meth:`guide_problem` says why another one does not, which
    ``create_guide`` and ``genmod list --pairs`` report.
    """

    registry_name = "model"
    latent_sites: tuple[LatentSite, ...] = ()
    max_plate_nesting = 1
    data_plate = "data"
    uses_labels = False
    allows_missing_labels = False
    num_classes = 0
    has_log_likelihood = True
    default_guide: str | None = None
    default_objective: str | None = None
    supported_guides: tuple[str, ...] | None = None

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        if not data_shape or any(int(d) <= 0 for d in data_shape):
            raise ValueError(f"data shape must be non-empty and positive, got {tuple(data_shape)}")
        self.data_shape = tuple(int(d) for d in data_shape)
        self.init_kwargs: dict = {}

    @contract_default
    def forward(self, x: Tensor | None = None, num_samples: int | None = None) -> Tensor:
        num = x.shape[0] if x is not None else num_samples
        if num is None:
            raise ValueError("pass data x or num_samples")
        with pyro.plate("data", num):
            latents = self.prior()
            return pyro.sample("x", self.likelihood(latents), obs=x)

    @contract_default
    def prior(self) -> dict[str, Tensor]:
        """Sample every latent site from p(z); return ``{site name: value}``.

        By default each site is drawn from its :meth:`prior_distributions` entry; a model whose
        sites depend on each other (a hierarchy) overrides this method instead.
        """
        return {name: pyro.sample(name, d) for name, d in self.prior_distributions().items()}

    def prior_distributions(self) -> dict[str, Distribution]:
        """p(z) as one distribution per latent site, for a prior whose sites are independent.
        The trace-free training step scores these directly."""
        raise NotImplementedError(f"{type(self).__name__} implements neither prior() nor prior_distributions()")

    def likelihood(self, latents: dict[str, Tensor]) -> Distribution:
        """p(x | z) with event shape ``data_shape``."""
        raise NotImplementedError

    @contract_default
    def likelihood_log_prob(self, latents: dict[str, Tensor], x: Tensor) -> Tensor:
        """log p(x | z) per data point: ``likelihood(latents).log_prob(x)``. A model may compute
        it without building the distribution; the trace-free training step calls it."""
        return self.likelihood(latents).log_prob(x)

    def guide_problem(self, guide_name: str) -> str | None:
        """Why the registered guide ``guide_name`` does not pair with this model by the model's own
        declaration (``supported_guides``), or ``None``; the guide may still refuse its sites."""
        if self.supported_guides is None or guide_name in self.supported_guides:
            return None
        return f"model '{self.registry_name}' pairs only with the guide(s) {', '.join(self.supported_guides)}"

    def validate_labels(self, y: Tensor, num: int, what: str = "labels") -> None:
        """Raise :class:`DataError` unless ``y`` holds ``num`` class indices (-1: unknown, where allowed)."""
        name = self.registry_name
        if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != (num,):
            got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise DataError(f"{what} must be an integer tensor of shape ({num},), got {got}")
        low = -1 if self.allows_missing_labels else 0
        if bool(((y < low) | (y >= self.num_classes)).any()):
            missing = "; -1 marks an unknown label" if self.allows_missing_labels else (
                f"; model '{name}' needs every label (use 'm2' for partly labelled data)"
            )
            raise DataError(f"{what} must lie in [{low}, {self.num_classes - 1}] for model '{name}'{missing}")

    def validate_data(self, x: Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` naming the problem if ``x`` cannot be scored by this model."""
        check_points(x, self.data_shape, self.registry_name, what, getattr(self, "observation", None))

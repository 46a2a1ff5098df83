"""Latent-site declarations, and the check that a guide covers a model's latent sites."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from torch.distributions import constraints

from .errors import PairingError

__all__ = ["LatentSite", "check_pair", "describe_support"]


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site of a model, declared so a guide can be built without running it.

    Arguments:
        name: the Pyro sample-site name.
        event_shape: the shape of one draw for one data point (the data plate is not included).
        support: the site's support, a ``torch.distributions.constraints`` object.
        discrete: whether the site takes discrete values (it then needs enumeration or a
            discrete proposal).
    """

    name: str
    event_shape: tuple[int, ...]
    support: constraints.Constraint = constraints.real
    discrete: bool = False

    @property
    def size(self) -> int:
        """Number of scalars in one draw."""
        return prod(self.event_shape)

    def describe(self) -> str:
        kind = "discrete" if self.discrete else "continuous"
        return f"'{self.name}' {kind}, shape {tuple(self.event_shape)}, support {describe_support(self.support)}"


def describe_support(support: constraints.Constraint) -> str:
    """A short readable name for a constraint (``real``, ``simplex``, ``integer_interval(0, 9)``)."""
    while isinstance(support, constraints.independent):  # "IndependentConstraint(Real(), 1)"
        support = support.base_constraint
    if id(support) in _CONSTRAINT_NAMES:
        return _CONSTRAINT_NAMES[id(support)]
    return repr(support).replace("()", "").lower()


# The public singletons of torch.distributions.constraints by name: real, positive, simplex, ...
_CONSTRAINT_NAMES = {
    id(value): name
    for name, value in reversed(list(vars(constraints).items()))
    if isinstance(value, constraints.Constraint) and not name.startswith("_")
}


def _same_support(a: constraints.Constraint, b: constraints.Constraint) -> bool:
    return describe_support(a) == describe_support(b)


def check_pair(model, guide) -> None:
    """Raise :class:`PairingError` unless ``guide`` samples exactly the latent sites of ``model``.

    The error names the first site that differs and what differs: name, shape, support,
    or discrete versus continuous.
    """
    model_name = getattr(model, "registry_name", type(model).__name__)
    guide_name = getattr(guide, "registry_name", type(guide).__name__)
    want = {s.name: s for s in model.latent_sites}
    have = {s.name: s for s in guide.latent_sites}
    for name, site in want.items():
        if name not in have:
            raise PairingError(
                f"guide '{guide_name}' does not sample latent site '{name}' of model "
                f"'{model_name}' (it samples {sorted(have) or 'nothing'}); build the guide "
                f"for this model with create_guide(name, model)"
            )
        other = have[name]
        if tuple(other.event_shape) != tuple(site.event_shape):
            raise PairingError(
                f"latent site '{name}': model '{model_name}' has shape {tuple(site.event_shape)} "
                f"but guide '{guide_name}' samples shape {tuple(other.event_shape)}; build the "
                f"guide for this model with create_guide(name, model)"
            )
        if other.discrete != site.discrete:
            kinds = {True: "discrete", False: "continuous"}
            raise PairingError(
                f"latent site '{name}': model '{model_name}' has a {kinds[site.discrete]} site "
                f"but guide '{guide_name}' samples a {kinds[other.discrete]} one"
            )
        if not _same_support(other.support, site.support):
            raise PairingError(
                f"latent site '{name}': model '{model_name}' has support "
                f"{describe_support(site.support)} but guide '{guide_name}' samples support "
                f"{describe_support(other.support)}"
            )
    extra = sorted(set(have) - set(want))
    if extra:
        raise PairingError(
            f"guide '{guide_name}' samples site(s) {extra} that model '{model_name}' does not "
            f"have (its latent sites are {sorted(want)})"
        )

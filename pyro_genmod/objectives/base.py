"""The objective contract: ``objective(model, guide, x)`` returns ``(differentiable, value)``.

Each objective is one file in this folder registered with ``@register_objective("name")``: a
tensor to differentiate, and the value of the loss (the negative bound summed over the batch).
For most estimators these coincide; for ``tracegraph_elbo`` the tensor is Pyro's surrogate loss,
whose gradient is the score-function gradient, and for ``iwae_dreg`` it is a surrogate whose
guide gradient is the doubly reparameterized one.

An objective that learns state of its own while training (FactorVAE's discriminator and its
optimizer) exposes it as named tensors, :meth:`Objective.state_tensors`, and takes it back with
:meth:`Objective.load_state_tensors`; the checkpoint stores them beside the model's, so a
resumed fit continues bit for bit. The others keep none (the defaults).
"""

from __future__ import annotations

import ast
import re

from pyro import infer
from torch import Tensor

from pyro_genmod._registry import OBJECTIVES, _check_options
from pyro_genmod.errors import ConfigError, UnknownNameError

__all__ = [
    "LossPair",
    "Objective",
    "PyroELBO",
    "check_reparameterizable",
    "get_objective",
    "latent_model",
    "list_objectives",
    "parse_objective",
]

LossPair = tuple[Tensor, float]


def latent_model(model, name: str):
    """The model whose ``latent_sites`` an objective reads: ``model``, or the model inside the
    wrapper that feeds it its labels during training (``cvae``, ``m2``)."""
    inner = model if hasattr(model, "latent_sites") else getattr(model, "fn", None)
    if not hasattr(inner, "latent_sites"):
        raise ConfigError(f"objective '{name}' needs a model that declares its latent sites")
    return inner


def check_reparameterizable(model, name: str) -> None:
    discrete = [site.name for site in latent_model(model, name).latent_sites if site.discrete]
    if discrete:
        raise ConfigError(
            f"objective '{name}' differentiates through the guide's samples, but latent site "
            f"'{discrete[0]}' is discrete; use objective='traceenum_elbo' or 'tracegraph_elbo'"
        )


class Objective:
    """A named objective; ``objective(model, guide, x)`` returns ``(differentiable, value)``."""

    registry_name = ""  # set by @register_objective

    @property
    def name(self) -> str:
        return self.registry_name

    def __init__(self, num_particles: int = 1):
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ConfigError(f"num_particles must be a positive integer, got {num_particles}")
        self.num_particles = num_particles

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        raise NotImplementedError

    def check_data_parallel(self) -> None:
        """Raise :class:`ConfigError` if this objective cannot train with ``distributed=True``."""

    def state_tensors(self) -> dict[str, Tensor]:
        """The state this objective has learned while training, as named tensors (none here)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Take back what :meth:`state_tensors` returned (before or after the first call)."""
        if tensors:
            raise ConfigError(
                f"objective '{self.name}' keeps no state, but was given {len(tensors)} tensors "
                f"(such as '{next(iter(tensors))}'); they belong to another objective"
            )


class PyroELBO(Objective):
    """One of Pyro's ELBO estimators, particles vectorized."""

    elbo_class: type = infer.Trace_ELBO

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles)
        self.elbo = self.elbo_class(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=1,
        )

    def __call__(self, model, guide, x: Tensor) -> LossPair:
        loss = self.elbo.differentiable_loss(model, guide, x)
        return loss, float(loss.detach())


def list_objectives() -> list[str]:
    """Names of all registered objectives."""
    return OBJECTIVES.names()


_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def _option_value(node: ast.expr):
    """A literal (``6``, ``0.5``, ``[64, 64]``, ``'imq'``) or a bare word (``imq``) as text."""
    if isinstance(node, ast.Name):
        return node.id
    return ast.literal_eval(node)


def parse_objective(spec: str) -> tuple[str, dict]:
    """``"beta_tcvae(beta=6, kernel=imq)"`` -> ``("beta_tcvae", {"beta": 6, "kernel": "imq"})``.

    An objective's options can be written into its name, so that every place that takes an
    objective name (``fit(objective=...)``, ``genmod train --objective``, a bench config's
    ``objectives``) takes its options too, and records them with the run.
    """
    example = "write NAME or NAME(option=value, ...), e.g. 'beta_tcvae(beta=6)'"
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(f"objective {spec!r} is not a name; {example}")
    name, body = match.group(1).lower(), match.group(2)
    if body is None:
        return name, {}
    try:
        call = ast.parse(f"f({body})", mode="eval").body
        if call.args or any(k.arg is None for k in call.keywords):
            raise ValueError
        return name, {k.arg: _option_value(k.value) for k in call.keywords}
    except (SyntaxError, ValueError, TypeError):
        raise ConfigError(f"objective {spec!r}: the options are not option=value pairs; {example}") from None


def get_objective(name: str, num_particles: int = 1, **options) -> Objective:
    """Build the objective ``name`` (case-insensitive; ``Trace_ELBO`` works too).

    Options go in ``options`` or in the name, ``"beta_tcvae(beta=6)"`` (see
    :func:`parse_objective`); an option the objective does not take, or a value of the wrong
    kind, raises :class:`ConfigError` naming it.
    """
    key, written = parse_objective(name) if isinstance(name, str) else (name, {})
    if key not in list_objectives():
        raise UnknownNameError(f"unknown objective '{name}'; choose one of: {', '.join(list_objectives())}")
    cls = OBJECTIVES.lookup(key)
    return cls(num_particles, **_check_options(cls, "objective", key, {**written, **options}, skip=1))

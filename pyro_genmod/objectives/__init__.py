"""Training objectives: Pyro's ELBO estimators, the vectorized IWAE bound and its DReG gradient.

One file per objective, found by the registry; ``pyro_genmod.objectives`` keeps the names it
always exported. A new objective is a new file here with ``@register_objective("name")`` (see
:mod:`pyro_genmod.objectives.base`).
"""

from .base import LossPair, Objective, PyroELBO, check_reparameterizable, get_objective, list_objectives
from .iwae import IWAE
from .iwae_dreg import DReGIWAE
from .trace_elbo import TraceELBO
from .traceenum_elbo import TraceEnumELBO
from .tracegraph_elbo import TraceGraphELBO
from .tracemeanfield_elbo import TraceMeanFieldELBO

__all__ = [
    "Objective", "PyroELBO", "LossPair", "check_reparameterizable", "get_objective", "list_objectives", "TraceELBO",
    "TraceMeanFieldELBO", "TraceEnumELBO", "TraceGraphELBO", "IWAE", "DReGIWAE",
]

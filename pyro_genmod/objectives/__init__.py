"""Training objectives: Pyro's ELBO estimators, the IWAE family (IWAE, DReG, MIWAE, PIWAE, CIWAE) and
latent regularizers (beta-TCVAE, FactorVAE, InfoVAE, WAE-MMD).

One file per objective, found by the registry; ``pyro_genmod.objectives`` keeps the names it
always exported. A new objective is a new file here with ``@register_objective("name")`` (see
:mod:`pyro_genmod.objectives.base`).
"""

from .base import (
    LossPair,
    Objective,
    PyroELBO,
    check_reparameterizable,
    get_objective,
    list_objectives,
    parse_objective,
)
from .beta_tcvae import BetaTCVAE
from .ciwae import CIWAE
from .factor_vae import FactorVAE
from .info_vae import InfoVAE
from .iwae import IWAE
from .iwae_dreg import DReGIWAE
from .miwae import MIWAE
from .piwae import PIWAE
from .trace_elbo import TraceELBO
from .traceenum_elbo import TraceEnumELBO
from .tracegraph_elbo import TraceGraphELBO
from .tracemeanfield_elbo import TraceMeanFieldELBO
from .wae_mmd import WAEMMD

__all__ = [
    "CIWAE",
    "IWAE",
    "MIWAE",
    "PIWAE",
    "WAEMMD",
    "BetaTCVAE",
    "DReGIWAE",
    "FactorVAE",
    "InfoVAE",
    "LossPair",
    "Objective",
    "PyroELBO",
    "TraceELBO",
    "TraceEnumELBO",
    "TraceGraphELBO",
    "TraceMeanFieldELBO",
    "check_reparameterizable",
    "get_objective",
    "list_objectives",
    "parse_objective",
]

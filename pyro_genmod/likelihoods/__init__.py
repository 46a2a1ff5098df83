"""Observation models p(x | decoder output): one file per likelihood, found by the registry.

``pyro_genmod.likelihoods`` keeps the names it always exported; a new likelihood is a new file
here with ``@register_likelihood("name")`` (see :mod:`pyro_genmod.likelihoods.base`).
"""

from .base import Likelihood, bernoulli_logits_log_prob, create_likelihood, unit_interval_problem
from .bernoulli import Bernoulli
from .continuous_bernoulli import ContinuousBernoulli
from .discretized_logistic import DiscretizedLogistic, DiscretizedLogisticDistribution
from .gaussian import Gaussian

__all__ = [
    "Likelihood", "Bernoulli", "Gaussian", "ContinuousBernoulli", "DiscretizedLogistic",
    "DiscretizedLogisticDistribution", "create_likelihood", "bernoulli_logits_log_prob", "unit_interval_problem",
]

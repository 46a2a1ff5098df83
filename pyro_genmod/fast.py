"""Old import path of the log-density engine, kept as a thin re-export: see :mod:`pyro_genmod.densities`
(and :mod:`pyro_genmod.distributions` for the reparameterized draws, :mod:`pyro_genmod.optim` for Adam)."""

from .densities import FastPathUnsupported, elbo_loss, log_densities, supports_fast_elbo  # noqa: F401
from .distributions import normal_rsample_with_log_prob, posterior_draws, rsample_with_log_prob  # noqa: F401

__all__ = [
    "FastPathUnsupported", "log_densities", "elbo_loss", "supports_fast_elbo", "normal_rsample_with_log_prob",
    "rsample_with_log_prob", "posterior_draws",
]

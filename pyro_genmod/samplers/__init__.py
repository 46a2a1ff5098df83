"""Ex-post samplers: a density fitted to the training set's posterior means, drawn from instead of p(z).

One file per kind (``gmm``, ``maf``, ``two_stage``), each registered with :func:`register_sampler`;
:func:`~pyro_genmod.tasks.fit_sampler` fits one and :func:`~pyro_genmod.tasks.sample` draws with it.
"""

from .base import SAMPLERS, LatentSampler, list_samplers, register_sampler

__all__ = ["SAMPLERS", "LatentSampler", "list_samplers", "register_sampler"]

"""The log-density engine: every "replay the guide into the model and add up log p - log q".

Training losses (``Trace_ELBO``'s value and gradient, IWAE, DReG), importance-sampled scores,
the KL term of each latent site (free bits, the benchmarks' KL per dimension) and the inference
gaps all call this module. One lightweight messenger, :class:`SiteScores`, adds each site's
log-density as the site executes (scaled and masked as Pyro does, or per point as the scorer
needs), and replays values into a program; :func:`score_program` runs one program under it,
:func:`log_densities` runs a guide then the model on the guide's draws.

Pyro's ``Trace_ELBO`` records both programs in a ``Trace``, then walks it to score every site.
For these single-pass estimators the trace is not needed: the numbers are the same sums over
the same draws, so the loss and its gradient equal ``Trace_ELBO``'s whenever every guide site is
reparameterized (no score-function term) and nothing is enumerated; :func:`elbo_loss` refuses
other pairs (:class:`FastPathUnsupported`) so the caller can fall back to Pyro. For a pair that
runs the zoo's own contracts, a single particle is computed from the distributions directly
(:func:`_contract_densities`). Distribution argument validation is switched off in this hot
path (the training loop already stops on a non-finite loss).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent

from .distributions import add_log_prob, sum_event
from .errors import FastPathUnsupported, GenmodError
from .likelihoods.base import bernoulli_logits_log_prob
from .markers import is_contract_default
from .seeding import forked_rng

__all__ = [
    "FastPathUnsupported",
    "SiteScores",
    "score_program",
    "log_densities",
    "latent_log_ratios",
    "elbo_loss",
    "supports_fast_elbo",
]

_INDEPENDENT = (Independent, dist.Independent)


class _Unvalidated:
    """Distribution argument checks off (torch's default flag only: cheaper than
    ``pyro.validation_enabled(False)``, which also resets Pyro's inference checks). A class
    rather than a ``contextmanager`` generator: it is entered at every training step."""

    def __enter__(self) -> None:
        self.previous = Distribution._validate_args
        Distribution._validate_args = False  # what set_default_validate_args(False) sets

    def __exit__(self, *exc) -> None:
        Distribution._validate_args = self.previous


def _log_prob(fn, value: Tensor) -> Tensor:
    """``fn.log_prob(value)``, with ``Independent`` unwrapped and its event dimensions summed
    directly; independent Bernoulli logits (the image likelihood) go through
    :func:`~pyro_genmod.likelihoods.bernoulli_logits_log_prob`."""
    ndims = 0
    while type(fn) in _INDEPENDENT:
        fn, ndims = fn.base_dist, ndims + fn.reinterpreted_batch_ndims
    if type(fn) in (Bernoulli, dist.Bernoulli) and "logits" in fn.__dict__ and not fn._validate_args:
        return bernoulli_logits_log_prob(fn.logits, value, ndims)
    return sum_event(fn.log_prob(value), ndims)


class SiteScores(Messenger):
    """Adds up ``fn.log_prob(value)`` (scaled and masked) over the sample sites it sees.

    Arguments:
        replay: values to put at unobserved sites (the guide's draws, for the model).
        reparameterized: refuse unobserved sites that cannot be reparameterized or are enumerated.
        per_point: refuse sites whose log-density lacks the particle and data dimensions (sites
            outside the data plate), and add each site's full log-density, ignoring
            ``poutine.scale`` and ``poutine.mask`` as the per-point scorer always has.
        strict: refuse unobserved sites that ``replay`` does not cover.
        keep_sites: also keep each site's log-density by name in :attr:`sites`.
    """

    def __init__(
        self,
        replay: dict[str, Tensor] | None = None,
        reparameterized: bool = False,
        per_point: bool = False,
        strict: bool = False,
        keep_sites: bool = False,
    ):
        super().__init__()
        self.replay = replay
        self.strict = strict
        self.reparameterized = reparameterized
        self.per_point = per_point
        self.values: dict[str, Tensor] = {}
        self.sites: dict[str, Tensor] | None = {} if keep_sites else None
        self.total: Tensor | float = 0.0

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if self.replay is not None and msg["name"] in self.replay:
            msg["value"] = self.replay[msg["name"]]
        elif self.strict:
            raise FastPathUnsupported(f"site '{msg['name']}' is sampled by the model but not by the guide")
        elif self.reparameterized and (not msg["fn"].has_rsample or msg["infer"].get("enumerate")):
            raise FastPathUnsupported(
                f"site '{msg['name']}' is not reparameterized; Trace_ELBO needs its score-function term"
            )

    def _postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        log_p = _log_prob(msg["fn"], msg["value"]) if not msg["args"] and not msg["kwargs"] else (
            msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
        )
        if not self.per_point:
            log_p = scale_and_mask(log_p, msg["scale"], msg["mask"])
        elif log_p.dim() < 2:
            raise GenmodError(
                f"site '{msg['name']}' is not inside the data plate; per-point log-likelihoods "
                f"need every site to be local to a data point"
            )
        self.total = add_log_prob(self.total, log_p)
        if self.sites is not None:
            self.sites[msg["name"]] = log_p
        if not msg["is_observed"]:
            self.values[msg["name"]] = msg["value"]


def score_program(
    program, x: Tensor, *, replay: dict[str, Tensor] | None = None, reparameterized: bool = False,
    per_point: bool = False, strict: bool = False, keep_sites: bool = False,
) -> SiteScores:
    """Run ``program(x)`` once under :class:`SiteScores` and return it (``.total``, ``.values``,
    ``.sites``)."""
    scores = SiteScores(replay=replay, reparameterized=reparameterized, per_point=per_point, strict=strict,
                        keep_sites=keep_sites)
    with scores:
        program(x)
    return scores


def _particles(model, num_particles: int, vectorize: bool):
    dim = -(model.max_plate_nesting + 1)
    return pyro.plate("num_particles_vectorized", num_particles, dim=dim) if vectorize else nullcontext()


def log_densities(
    model, guide, x: Tensor, num_particles: int = 1, *, reparameterized: bool = False, per_point: bool = False
) -> tuple[Tensor, Tensor]:
    """``(log p(x, z), log q(z | x))`` for ``num_particles`` draws z ~ q, without Pyro traces.

    Both totals keep the particle plate at dim ``-(model.max_plate_nesting + 1)`` when
    ``num_particles > 1`` or ``per_point`` (Pyro's ``vectorize_particles`` layout; otherwise a
    single particle has no particle dimension) and any plate dimensions, so they broadcast.

    Arguments:
        model, guide: a model and a guide for it.
        x: a batch of data.
        num_particles: draws per data point, vectorized as a plate.
        reparameterized: raise :class:`FastPathUnsupported` at a guide site without ``rsample``.
        per_point: the importance-sampling scorer's sums (see :class:`SiteScores`); raise
            :class:`GenmodError` at a site outside the data plate.
    """
    with pyro.validation_enabled(False), _particles(model, num_particles, num_particles > 1 or per_point):
        q = score_program(guide, x, reparameterized=reparameterized, per_point=per_point)
        p = score_program(model, x, replay=q.values, per_point=per_point)
    return torch.as_tensor(p.total), torch.as_tensor(q.total)


def latent_log_ratios(model, guide, x: Tensor, num_particles: int = 1) -> dict[str, Tensor]:
    """log q(z_s | ...) - log p(z_s | parents) for each latent site s at draws z ~ q, shape
    ``(num_particles, N)``: each site's KL term before the expectation (no gradients, nothing
    recorded outside)."""
    with torch.no_grad(), poutine.block(), pyro.validation_enabled(False), _particles(model, num_particles, True):
        q = score_program(guide, x, per_point=True, keep_sites=True)
        p = score_program(model, x, replay=q.values, per_point=True, keep_sites=True)
    return {name: (q.sites[name] - p.sites[name]).expand(num_particles, x.shape[0]) for name in q.values if name in p.sites}


def _runs_contract_programs(model, guide) -> bool:
    """Whether model and guide run the contracts' own ``forward`` (prior and likelihood in the
    data plate; one draw from each ``posterior`` site in the data plate)."""
    # Any active Pyro handler (a user's poutine.scale or mask, say) must see every site, which
    # the direct computation bypasses: then the scoring messengers are used instead.
    return not _PYRO_STACK and _contract_types(type(model), type(guide))


@functools.lru_cache(maxsize=256)
def _contract_types(model_type: type, guide_type: type) -> bool:
    return is_contract_default(model_type.forward) and is_contract_default(guide_type.forward)


@functools.lru_cache(maxsize=256)
def _independent_prior(model_type: type) -> bool:
    """Whether the model's ``prior`` is the contract's: its ``prior_distributions``, site by site."""
    return is_contract_default(model_type.prior)


@functools.lru_cache(maxsize=256)
def _computes_likelihood_log_prob(model_type: type) -> bool:
    return not is_contract_default(model_type.likelihood_log_prob)


def _contract_densities(model, guide, x: Tensor) -> tuple[Tensor, Tensor]:
    """One particle straight from the contracts: z and log q(z|x) from
    ``guide.sample_with_log_prob(x)``, then log p(z) (from ``model.prior_distributions()``, or
    ``model.prior()`` run with z replayed) and ``model.likelihood_log_prob(z, x)``: the sums
    the two ``forward`` programs would record, without a plate or a sample statement per site."""
    latents, log_q = guide.sample_with_log_prob(x)
    if _independent_prior(type(model)):
        log_p = 0.0
        for name, p in model.prior_distributions().items():
            if name not in latents:
                raise FastPathUnsupported(f"site '{name}' is sampled by the model but not by the guide")
            log_p = add_log_prob(log_p, _log_prob(p, latents[name]))
        values = latents
    else:
        prior = SiteScores(replay=latents, strict=True)
        with prior:
            values = model.prior()
        log_p = prior.total
    if _computes_likelihood_log_prob(type(model)):  # without building the distribution
        log_lik = model.likelihood_log_prob(values, x)
    else:
        log_lik = _log_prob(model.likelihood(values), x)
    return add_log_prob(log_p, log_lik), log_q


def elbo_loss(model, guide, x: Tensor, num_particles: int = 1) -> Tensor:
    """The negative ELBO summed over the batch, as ``Trace_ELBO(num_particles, vectorized)``.

    Same value and gradient as ``Trace_ELBO.differentiable_loss`` on the same draws, for pairs
    whose guide sites are all reparameterized; raises :class:`FastPathUnsupported` otherwise.
    A single particle of a pair that runs the contracts' own programs is computed from the
    distributions directly; everything else goes through the scoring messengers.
    """
    if num_particles == 1 and _runs_contract_programs(model, guide):
        with _Unvalidated():
            log_p, log_q = _contract_densities(model, guide, x)
        return (log_q - log_p).sum()  # per point, then over the batch (one reduction)
    log_p, log_q = log_densities(model, guide, x, num_particles, reparameterized=True)
    return (log_q.sum() - log_p.sum()) / num_particles


def supports_fast_elbo(model, guide, x: Tensor) -> bool:
    """Whether :func:`elbo_loss` applies to the pair; probes one data point, RNG untouched."""
    with forked_rng(), torch.no_grad():
        try:
            elbo_loss(model, guide, x[:1])
        except FastPathUnsupported:
            return False
    return True

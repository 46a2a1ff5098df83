"""Trace-free log-densities of a model/guide pair: Pyro's ELBO and importance weights, fast.

Pyro's ``Trace_ELBO`` records both programs in a ``Trace``, then walks it to score every site.
For the single-pass estimators used here the trace is not needed: one lightweight messenger
adds each site's scaled and masked log-density as the site executes, and another replays the
guide's draws into the model. The numbers are the same sums over the same draws, so the loss
and its gradient equal ``Trace_ELBO``'s whenever every guide site is reparameterized (no
score-function term) and nothing is enumerated; :func:`elbo_loss` refuses other pairs so the
caller can fall back to Pyro. Distribution argument validation is switched off in this hot
path (the training loop already stops on a non-finite loss).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.distributions import normal as torch_normal

from .distributions import LOG_SQRT_2PI, sum_event
from .errors import GenmodError
from .likelihoods import bernoulli_logits_log_prob

__all__ = [
    "FastPathUnsupported",
    "log_densities",
    "elbo_loss",
    "supports_fast_elbo",
    "normal_rsample_with_log_prob",
    "rsample_with_log_prob",
    "posterior_draws",
]


class FastPathUnsupported(GenmodError):
    """The pair needs Pyro's full ``Trace_ELBO`` (a score-function or enumerated site)."""


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


class _Score(Messenger):
    """Adds up ``fn.log_prob(value)`` (scaled and masked) over the sample sites it sees.

    Arguments:
        replay: values to put at unobserved sites (the guide's draws, for the model).
        reparameterized: refuse unobserved sites that cannot be reparameterized or are enumerated.
        per_point: refuse sites whose log-density lacks the particle and data dimensions (sites
            outside the data plate), and add each site's full log-density, ignoring
            ``poutine.scale`` and ``poutine.mask`` as the per-point scorer always has.
        strict: refuse unobserved sites that ``replay`` does not cover.
    """

    def __init__(
        self,
        replay: dict[str, Tensor] | None = None,
        reparameterized: bool = False,
        per_point: bool = False,
        strict: bool = False,
    ):
        super().__init__()
        self.replay = replay
        self.strict = strict
        self.reparameterized = reparameterized
        self.per_point = per_point
        self.values: dict[str, Tensor] = {}
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
        self.total = _add(self.total, log_p)
        if not msg["is_observed"]:
            self.values[msg["name"]] = msg["value"]


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
        per_point: the importance-sampling scorer's sums (see :class:`_Score`); raise
            :class:`GenmodError` at a site outside the data plate.
    """
    dim = -(model.max_plate_nesting + 1)
    guide_score = _Score(reparameterized=reparameterized, per_point=per_point)
    vectorize = num_particles > 1 or per_point
    with pyro.validation_enabled(False):
        with pyro.plate("num_particles_vectorized", num_particles, dim=dim) if vectorize else nullcontext():
            with guide_score:
                guide(x)
            model_score = _Score(replay=guide_score.values, per_point=per_point)
            with model_score:
                model(x)
    return torch.as_tensor(model_score.total), torch.as_tensor(guide_score.total)


_INDEPENDENT = (Independent, dist.Independent)
_NORMAL = (Normal, dist.Normal)


def _add(total: Tensor | float, log_p: Tensor) -> Tensor:
    """``total + log_p``, where a float total is the empty sum 0.0 (no extra graph node)."""
    return log_p if isinstance(total, float) else total + log_p


def normal_rsample_with_log_prob(loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """z = loc + eps * scale with eps ~ N(0, 1), and log N(z; loc, scale) elementwise.

    The log-density is written in the standard draw eps: ``-eps^2/2 - log scale - log sqrt(2 pi)``.
    That is the same function of (loc, scale) as ``Normal(loc, scale).log_prob(loc + eps * scale)``,
    so the value and the gradient are the same (up to float rounding), with four operations
    instead of eight and no ``(z - loc) / scale`` round trip. ``eps`` is drawn by the function
    ``Normal.rsample`` draws with (looked up where it looks it up), so the random stream is the same.
    """
    eps = torch_normal._standard_normal(loc.shape, dtype=loc.dtype, device=loc.device)
    return loc + eps * scale, eps.square().mul(-0.5).sub(scale.log()).sub(LOG_SQRT_2PI)


def rsample_with_log_prob(q: Distribution) -> tuple[Tensor, Tensor]:
    """A reparameterized draw z ~ q and log q(z); a Normal (or an ``Independent`` Normal) goes
    through :func:`normal_rsample_with_log_prob`."""
    base, ndims = (q.base_dist, q.reinterpreted_batch_ndims) if type(q) in _INDEPENDENT else (q, 0)
    if type(base) in _NORMAL:  # loc and scale broadcast to the batch shape by Normal's constructor
        z, log_q = normal_rsample_with_log_prob(base.loc, base.scale)
        return z, sum_event(log_q, ndims)
    z = q.rsample()
    return z, q.log_prob(z)


def posterior_draws(posterior: dict[str, Distribution], x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """One reparameterized draw per point from each site's q(z|x), and log q summed over the
    sites per point; raises :class:`FastPathUnsupported` for a site without ``rsample`` or not
    batched over the points."""
    latents, log_q = {}, 0.0
    for name, q in posterior.items():
        if not q.has_rsample:
            raise FastPathUnsupported(f"site '{name}' is not reparameterized; Trace_ELBO needs its score-function term")
        if q.batch_shape != x.shape[:1]:
            raise FastPathUnsupported(f"guide site '{name}' has batch shape {tuple(q.batch_shape)}, not (N,)")
        latents[name], site_log_q = rsample_with_log_prob(q)
        log_q = _add(log_q, site_log_q)
    return latents, torch.as_tensor(log_q)


def _runs_contract_programs(model, guide) -> bool:
    """Whether model and guide run the contracts' own ``forward`` (prior and likelihood in the
    data plate; one draw from each ``posterior`` site in the data plate)."""
    # Any active Pyro handler (a user's poutine.scale or mask, say) must see every site, which
    # the direct computation bypasses: then the scoring messengers are used instead.
    return not _PYRO_STACK and _contract_types(type(model), type(guide))


@functools.lru_cache(maxsize=256)
def _contract_types(model_type: type, guide_type: type) -> bool:
    from pyro_genmod.guides.base import Guide
    from pyro_genmod.models.base import GenerativeModel

    return model_type.forward is GenerativeModel.forward and guide_type.forward is Guide.forward


@functools.lru_cache(maxsize=256)
def _independent_prior(model_type: type) -> bool:
    """Whether the model's ``prior`` is the contract's: its ``prior_distributions``, site by site."""
    from pyro_genmod.models.base import GenerativeModel

    return model_type.prior is GenerativeModel.prior


@functools.lru_cache(maxsize=256)
def _computes_likelihood_log_prob(model_type: type) -> bool:
    from pyro_genmod.models.base import GenerativeModel

    return model_type.likelihood_log_prob is not GenerativeModel.likelihood_log_prob


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
            log_p = _add(log_p, _log_prob(p, latents[name]))
        values = latents
    else:
        prior = _Score(replay=latents, strict=True)
        with prior:
            values = model.prior()
        log_p = prior.total
    if _computes_likelihood_log_prob(type(model)):  # without building the distribution
        log_lik = model.likelihood_log_prob(values, x)
    else:
        log_lik = _log_prob(model.likelihood(values), x)
    return _add(log_p, log_lik), log_q


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
    devices = [x.device] if x.device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            elbo_loss(model, guide, x[:1])
        except FastPathUnsupported:
            return False
    return True

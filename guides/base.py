"""Contract: a guide is q(z|x) over the latent sites a model declares, sampled in the data plate."""

from __future__ import annotations

from math import prod

import pyro
import torch
from pyro.distributions import Distribution
from torch import Tensor, nn
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import ComposeTransform, ReshapeTransform, Transform

from pyro_genmod.distributions import posterior_draws
from pyro_genmod.latents import LatentSite
from pyro_genmod.markers import contract_default
from pyro_genmod.nn import make_encoder

__all__ = ["Guide", "AmortizedGuide", "unconstraining", "onto_site"]


class Guide(nn.Module):
    """A variational family q(z|x) built from a model's latent-site declaration.

    ``forward(x)`` samples exactly the model's latent sites inside the model's data plate
    (``pyro.plate("data", N)`` for the zoo's models; a Pyro program's own plate name otherwise).
    Subclasses implement :meth:`posterior`, returning one distribution per site with batch
    shape ``(N,)`` and the site's event shape, or override :meth:`forward` for families whose
    sites depend on each other. ``site_problem`` says why a site cannot be covered.
    """

    registry_name = "guide"
    is_point_estimate = False  # a Delta guide is not a density, so not an IS proposal
    scores_own_samples_only = False  # planar, radial, Sylvester: log q only at their own draws

    def __init__(self, model):
        super().__init__()
        self.latent_sites: tuple[LatentSite, ...] = tuple(model.latent_sites)
        self.data_shape = tuple(model.data_shape)
        self.data_plate = getattr(model, "data_plate", "data")  # a Pyro program may name it otherwise
        self.init_kwargs: dict = {}

    @classmethod
    def site_problem(cls, site: LatentSite) -> str | None:
        """Why this family cannot cover ``site``, or ``None``."""
        return None

    @classmethod
    def unsupported_reason(cls, model) -> str | None:
        for site in model.latent_sites:
            problem = cls.site_problem(site)
            if problem:
                return f"latent site {site.describe()}: {problem}"
        return None

    @contract_default
    def forward(self, x: Tensor, num_samples: int | None = None) -> dict[str, Tensor]:
        # Discrete sites are marked for enumeration: TraceEnum_ELBO sums over them exactly,
        # every other estimator (and the scorer) samples them.
        enumerate_ = {s.name: {"enumerate": "parallel"} for s in self.latent_sites if s.discrete}
        with pyro.plate(self.data_plate, x.shape[0]):
            return {
                name: pyro.sample(name, q, infer=enumerate_.get(name, {}))
                for name, q in self.posterior(x).items()
            }

    def posterior(self, x: Tensor) -> dict[str, Distribution]:
        """q(z|x) for each latent site."""
        raise NotImplementedError

    def sample_with_log_prob(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """One reparameterized draw z ~ q(z|x) per point and log q(z|x) per point: the guide's
        side of Trace_ELBO, which the trace-free training step computes. The default draws each
        site of :meth:`posterior`; a family may compute it without building the distributions.
        Raises :class:`~pyro_genmod.errors.FastPathUnsupported` for a site without ``rsample``."""
        return posterior_draws(self.posterior(x), x)


def unconstraining(site: LatentSite) -> tuple[tuple[int, ...], Transform | None]:
    """The unconstrained shape of ``site`` and the transform from it to the site's support.

    For a real-valued site this is its own shape and no transform; otherwise it is
    ``biject_to(support)`` (for example exp for positive sites, stick-breaking for a simplex).
    """
    if site.support is constraints.real:
        return tuple(site.event_shape), None
    transform = biject_to(site.support)
    return tuple(transform.inverse_shape(site.event_shape)), transform


def onto_site(q: Distribution, site: LatentSite) -> Distribution:
    """Map ``q`` over a flat unconstrained vector onto ``site``'s shape and support.

    The transforms are cached, so a flow that can only score its own samples (planar, radial,
    Sylvester) still scores them through the reshape and the support transform.
    """
    shape, transform = unconstraining(site)
    transforms: list[Transform] = []
    if shape != (prod(shape),):
        transforms.append(ReshapeTransform((prod(shape),), shape))
    if transform is not None:
        transforms.append(transform)
    if not transforms:
        return q
    return pyro.distributions.TransformedDistribution(q, ComposeTransform(transforms, cache_size=1))


class AmortizedGuide(Guide):
    """A guide whose parameters for every site come from one encoder network of x.

    The encoder (:func:`~pyro_genmod.nn.make_encoder`) is an MLP on the flattened data point, or
    for images (``encoder="conv"`` or ``"resnet"``) a convolutional or ResNet network with the
    decoders' option names (``channels``); subclasses say how many parameters each site needs
    (``num_params``) and how to turn them into a distribution (``site_distribution``).
    """

    @classmethod
    def site_problem(cls, site: LatentSite) -> str | None:
        if site.discrete:
            return (
                "the site is discrete, and this family is continuous; a guide for discrete sites "
                "samples it (or, with objective='traceenum_elbo', has it summed out exactly)"
            )
        return None

    def __init__(
        self, model, hidden=(200, 200), activation: str = "tanh", encoder: str = "mlp", channels: int = 32
    ):
        super().__init__(model)
        self.shapes = {s.name: unconstraining(s)[0] for s in self.latent_sites}
        self.transforms = {s.name: unconstraining(s)[1] for s in self.latent_sites}
        self.sizes = [self.num_params(prod(self.shapes[s.name])) for s in self.latent_sites]
        self.encoder = make_encoder(encoder, self.data_shape, sum(self.sizes), hidden, activation, channels)

    def num_params(self, size: int) -> int:
        raise NotImplementedError

    def site_distribution(self, params: Tensor, size: int) -> Distribution:
        """A distribution over a flat vector of ``size`` unconstrained values (event dim 1)."""
        raise NotImplementedError

    def variational_parameters(self, x: Tensor) -> Tensor:
        """The encoder output for ``x``: all sites' parameters, shape ``(N, sum(sizes))``.

        A non-amortized (local) guide replaces this with free per-point parameters.
        """
        return self.encoder(x.reshape(x.shape[0], -1))

    def posterior(self, x: Tensor) -> dict[str, Distribution]:
        return self.posterior_from(self.variational_parameters(x))

    def posterior_from(self, params: Tensor) -> dict[str, Distribution]:
        """q(z|x) for each site from the parameters :meth:`variational_parameters` returns."""
        chunks = params.split(self.sizes, dim=-1) if len(self.sizes) > 1 else (params,)
        return {
            site.name: onto_site(self.flat_posterior(site, chunk), site)
            for site, chunk in zip(self.latent_sites, chunks)
        }

    def flat_posterior(self, site: LatentSite, params: Tensor) -> Distribution:
        """q over ``site``'s flat unconstrained vector; flow guides add their transforms here."""
        return self.site_distribution(params, prod(self.shapes[site.name]))


def softplus_scale(raw: Tensor) -> Tensor:
    """A positive scale from an unconstrained network output, bounded away from zero."""
    return torch.nn.functional.softplus(raw) + 1e-4

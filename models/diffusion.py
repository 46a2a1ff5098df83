"""Gaussian diffusion (variance preserving) as a latent-variable model with latents x_1..x_T."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_genmod._registry import register_model
from pyro_genmod.distributions import standard_normal
from pyro_genmod.latents import LatentSite
from pyro_genmod.likelihoods import create_likelihood
from pyro_genmod.nn import ACTIVATIONS, mlp

from .base import GenerativeModel

__all__ = ["DENOISERS", "FORWARD_GUIDE", "SCHEDULES", "VARIANCES", "Diffusion", "noise_schedule", "site_name"]

SCHEDULES = ("cosine", "linear")
VARIANCES = ("learned", "small", "large")
DENOISERS = ("mlp", "conv")
FORWARD_GUIDE = "forward_process"
_CENTRED = ("bernoulli", "continuous_bernoulli", "discretized_logistic")  # data in [0, 1]: mapped to [-1, 1]


def site_name(t: int) -> str:
    """The latent site of step ``t`` (1..T): ``"x_1"``, ..., ``"x_T"``; the data site is ``"x"``."""
    return f"x_{t}"


def noise_schedule(kind: str, num_steps: int) -> Tensor:
    """beta_1..beta_T (float64) of a variance-preserving process with ``num_steps`` steps.

    ``"cosine"``: alpha_bar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2, s = 0.008,
    beta_t = 1 - alpha_bar(t) / alpha_bar(t-1) clipped to 0.999 (Nichol & Dhariwal, 2021).
    ``"linear"``: Ho et al.'s 1e-4..0.02 over 1,000 steps, both ends scaled by 1000/T so that any
    T ends near pure noise (Nichol & Dhariwal's scaling), clipped to 0.999; at T = 1 the single
    step is the start, beta_1 = 0.1 (a one-latent VAE with an informative fixed encoder).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule '{kind}'; choose one of {list(SCHEDULES)}")
    T = int(num_steps)
    if kind == "linear":
        scale = 1000.0 / T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    else:
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2).square()
        alpha_bar = f / f[0]
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=0.999)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the step t (Vaswani et al., 2017; as in Ho et al.) then an MLP."""

    def __init__(self, dim: int, activation: str):
        super().__init__()
        if int(dim) < 2:
            raise ValueError(f"time_dim must be at least 2, got {dim}")
        self.half = int(dim) // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(self.half, dtype=torch.float64) / self.half)
        self.register_buffer("frequencies", frequencies.float())
        self.net = nn.Sequential(nn.Linear(2 * self.half, int(dim)), ACTIVATIONS[activation](), nn.Linear(int(dim), int(dim)))
        self.dim = int(dim)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.to(self.frequencies.dtype).unsqueeze(-1) * self.frequencies
        return self.net(torch.cat([angles.sin(), angles.cos()], dim=-1))


class MLPDenoiser(nn.Module):
    """[x_t, embed(t)] -> MLP trunk -> two heads: the v estimate (D values, see :meth:`Diffusion.predict`) and the
    decoder's likelihood parameters (used at t = 1)."""

    def __init__(self, size: int, out_features: int, hidden: Sequence[int], time_dim: int, activation: str):
        super().__init__()
        if not hidden:
            raise ValueError("the MLP denoiser needs at least one hidden layer")
        self.embed = TimeEmbedding(time_dim, activation)
        self.trunk = nn.Sequential(mlp(size + time_dim, hidden[:-1], int(hidden[-1]), activation), ACTIVATIONS[activation]())
        self.velocity = nn.Linear(int(hidden[-1]), size)
        self.decode = nn.Linear(int(hidden[-1]), out_features)

    def forward(self, x: Tensor, t: Tensor, head: str) -> Tensor:
        h = self.trunk(torch.cat([x.flatten(1), self.embed(t)], dim=-1))
        return self.velocity(h) if head == "v" else self.decode(h)


class ConvDenoiser(nn.Module):
    """A small residual convolutional net at full resolution: a 3x3 convolution in, ``blocks``
    residual blocks (two 3x3 convolutions, the time embedding added to each block's first one as
    a per-channel bias), and two 1x1 heads: v (C maps) and the decoder parameters
    (``params_per_dim`` x C maps, the parameter index outermost as the likelihoods expect)."""

    def __init__(self, data_shape: tuple[int, ...], params_per_dim: int, channels: int, time_dim: int,
                 activation: str, blocks: int = 2):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"a conv denoiser needs image data of shape (C, H, W), got {tuple(data_shape)}")
        if int(channels) <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        c, ch = data_shape[0], int(channels)
        self.data_shape = tuple(data_shape)
        self.embed = TimeEmbedding(time_dim, activation)
        self.inp = nn.Conv2d(c, ch, 3, padding=1)
        self.act = ACTIVATIONS[activation]()
        self.time = nn.ModuleList(nn.Linear(time_dim, ch) for _ in range(blocks))
        self.first = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(blocks))
        self.second = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(blocks))
        self.velocity = nn.Conv2d(ch, c, 1)
        self.decode = nn.Conv2d(ch, c * int(params_per_dim), 1)

    def forward(self, x: Tensor, t: Tensor, head: str) -> Tensor:
        e = self.embed(t)
        h = self.inp(x.reshape(-1, *self.data_shape))
        for time, first, second in zip(self.time, self.first, self.second):
            h = h + second(self.act(first(self.act(h)) + time(e)[:, :, None, None]))
        out = (self.velocity if head == "v" else self.decode)(self.act(h))
        return out.flatten(1)


@register_model("diffusion")
class Diffusion(GenerativeModel):
    r"""Gaussian diffusion: x_T ~ N(0, I), x_{t-1} | x_t ~ N(mu(x_t, t), sigma_t^2 I), x ~ p(x | x_1).

    A deep latent-variable model with latent sites ``x_1``..``x_T`` (each shaped like a data
    point) whose guide is the fixed forward noising process q(x_{1:T} | x) (guide
    ``forward_process``, its default and the only learned-free guide the zoo pairs with it;
    ``prior`` also fits, as the importance-sampling baseline). Training maximizes the same ELBO
    as every model: ``diffusion_elbo`` (the default objective; one step t per point, Gaussian
    KLs in closed form) or the full chain with ``trace_elbo``; ``log_likelihood`` importance-samples
    whole forward chains.

    The forward process is variance preserving on the signal s(x): 2x - 1 for data in [0, 1]
    (``bernoulli``, ``continuous_bernoulli``, ``discretized_logistic`` likelihoods), x itself
    for ``gaussian``. q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), with x_0 = s(x),
    so q(x_t | x) = N(sqrt(alpha_bar_t) s(x), (1 - alpha_bar_t) I).

    The reverse steps share one denoiser network with a sinusoidal time embedding (an MLP, or a
    small residual conv net for images). It predicts v = sqrt(alpha_bar_t) eps - sqrt(1 -
    alpha_bar_t) x_0 (Salimans & Ho 2022), hence x0_hat(x_t, t), and mu(x_t, t) is the mean of
    q(x_{t-1} | x_t, x_0 = x0_hat): Ho et al.'s parameterization, written so that it stays
    bounded at a last step with beta_T near 1 (see :meth:`predict`). The
    variance is the forward posterior's beta~_t (``small``), beta_t (``large``) or a learned
    per-step interpolation between them in log space (``learned``, Nichol & Dhariwal 2021,
    which tightens the bound at small T). The decoder p(x | x_1) is a second head of the same
    network at t = 1 feeding one of the library's likelihoods.

    T (``num_steps``): the bound tightens as T grows (Kingma et al. 2021), while training cost
    per step does not grow with ``diffusion_elbo`` but scoring and full-chain training grow
    linearly in T. The default, T = 10, keeps a K = 1000 importance-sampled score of the digits
    test set to seconds on a 2-core CPU; the tests use T = 4 (the chain's algebra is the same at
    any T) and T = 1 (the model is then a one-latent VAE with a fixed encoder).

    References:
        | Deep Unsupervised Learning using Nonequilibrium Thermodynamics (Sohl-Dickstein et al.,
          2015) https://arxiv.org/abs/1503.03585
        | Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, 2020)
          https://arxiv.org/abs/2006.11239
        | Variational Diffusion Models (Kingma, Salimans, Poole & Ho, 2021)
          https://arxiv.org/abs/2107.00630
        | Improved Denoising Diffusion Probabilistic Models (Nichol & Dhariwal, 2021)
          https://arxiv.org/abs/2102.09672

    Arguments:
        data_shape: shape of one data point.
        num_steps: T, the number of latent steps.
        schedule: ``"cosine"`` (default) or ``"linear"`` noise schedule (see :func:`noise_schedule`).
        variance: reverse-step variance, ``"learned"`` (default), ``"small"`` or ``"large"``.
        denoiser: ``"mlp"`` (default) or ``"conv"`` (images only).
        hidden: MLP denoiser hidden-layer widths.
        channels: feature maps of the conv denoiser.
        time_dim: width of the time embedding.
        activation: network activation.
        likelihood, scale, num_levels: the decoder's observation model, as for ``vae``.
    """

    default_guide = FORWARD_GUIDE
    default_objective = "diffusion_elbo"
    supported_guides = (FORWARD_GUIDE, "prior")

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_steps: int = 10,
        schedule: str = "cosine",
        variance: str = "learned",
        denoiser: str = "mlp",
        hidden: Sequence[int] = (512, 512),
        channels: int = 32,
        time_dim: int = 32,
        activation: str = "elu",
        likelihood: str = "bernoulli",
        scale: float | None = None,
        num_levels: int | None = None,
    ):
        super().__init__(data_shape)
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance '{variance}'; choose one of {list(VARIANCES)}")
        if denoiser not in DENOISERS:
            raise ValueError(f"unknown denoiser '{denoiser}'; choose one of {list(DENOISERS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
        self.num_steps = T = int(num_steps)
        self.variance = variance
        self.latent_sites = tuple(LatentSite(site_name(t), self.data_shape) for t in range(1, T + 1))
        self.observation = create_likelihood(likelihood, self.data_shape, scale=scale, num_levels=num_levels)
        self.centred = likelihood in _CENTRED
        self.size = math.prod(self.data_shape)
        if denoiser == "mlp":
            self.denoiser = MLPDenoiser(self.size, self.observation.out_features, tuple(int(h) for h in hidden),
                                        int(time_dim), activation)
        else:
            self.denoiser = ConvDenoiser(self.data_shape, self.observation.params_per_dim, channels, int(time_dim), activation)
        betas = noise_schedule(schedule, T)
        alpha_bar = torch.cumprod(1 - betas, 0)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        small = betas * (1 - previous) / (1 - alpha_bar)  # beta~_t, 0 at t = 1
        # index t - 1 holds step t; computed in float64, stored in the default dtype
        for name, value in (
            ("betas", betas), ("alpha_bar", alpha_bar), ("alpha_bar_prev", previous),
            ("log_small", small.clamp(min=1e-20).log()), ("log_large", betas.log()),
        ):
            self.register_buffer(name, value.to(torch.get_default_dtype()))
        self.log_variance_mix = nn.Parameter(torch.zeros(T)) if variance == "learned" else None
        self.register_buffer("_zero", torch.zeros(()))
        # diffusion_elbo's importance sampling of t keeps each step's running E[L_{t-1}^2] here,
        # in the state that checkpoints save (see pyro_genmod.objectives.diffusion_elbo)
        self.register_buffer("step_loss_sq", torch.zeros(T - 1))
        self.register_buffer("step_loss_seen", torch.zeros(T - 1))

    # --- the forward process q (the guide's side) -------------------------------------------

    def signal(self, x: Tensor) -> Tensor:
        """x_0 = s(x): 2x - 1 for data in [0, 1], x for Gaussian data."""
        return 2 * x - 1 if self.centred else x

    def _at(self, buffer: Tensor, t, like: Tensor) -> Tensor:
        """``buffer`` at step(s) ``t`` (an int or a tensor of the batch shape), broadcastable to ``like``."""
        if isinstance(t, int):
            return buffer[t - 1]
        return buffer[t - 1].reshape(*t.shape, *(1,) * (like.dim() - t.dim()))

    def forward_step(self, previous: Tensor, t: int) -> dist.Distribution:
        """q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (x_0 = s(x))."""
        beta = self.betas[t - 1]
        return dist.Normal((1 - beta).sqrt() * previous, beta.sqrt()).to_event(len(self.data_shape))

    def forward_marginal(self, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of q(x_t | x) = N(sqrt(alpha_bar_t) s(x), (1 - alpha_bar_t) I)."""
        s = self.signal(x)
        ab = self._at(self.alpha_bar, t, s)
        return ab.sqrt() * s, (1 - ab).sqrt()

    def forward_posterior(self, x_t: Tensor, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x) for t >= 2 (Ho et al., eq. 7)."""
        return self.forward_posterior_signal(x_t, self.signal(x), t)

    def forward_posterior_signal(self, x_t: Tensor, x_0: Tensor, t) -> tuple[Tensor, Tensor]:
        """:meth:`forward_posterior` given the signal x_0 = s(x) (or an estimate of it)."""
        beta, ab, ab_prev = (self._at(b, t, x_t) for b in (self.betas, self.alpha_bar, self.alpha_bar_prev))
        mean = (ab_prev.sqrt() * beta * x_0 + (1 - beta).sqrt() * (1 - ab_prev) * x_t) / (1 - ab)
        return mean, beta * (1 - ab_prev) / (1 - ab)

    # --- the model p ------------------------------------------------------------------------

    def _steps(self, t, rows: int) -> Tensor:
        if isinstance(t, int):
            return torch.full((rows,), t, dtype=torch.long, device=self._zero.device)
        return t.reshape(-1)

    def network(self, x_t: Tensor, t, head: str = "v") -> Tensor:
        """The shared denoiser at step(s) ``t`` for ``x_t`` of shape ``(..., *data_shape)``:
        the v estimate (shape of ``x_t``) or, with ``head="decoder"``, the likelihood's
        parameters (shape ``(..., out_features)``)."""
        batch = x_t.shape[: x_t.dim() - len(self.data_shape)]
        flat = x_t.reshape(-1, *self.data_shape)
        out = self.denoiser(flat, self._steps(t, flat.shape[0]), head)
        return out.reshape(*batch, *self.data_shape) if head == "v" else out.reshape(*batch, -1)

    def reverse_log_variance(self, t) -> Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t), t >= 2 (an int or a tensor of steps)."""
        small, large = self.log_small[t - 1], self.log_large[t - 1]
        if self.variance == "small":
            return small
        if self.variance == "large":
            return large
        mix = torch.sigmoid(self.log_variance_mix[t - 1])
        return mix * large + (1 - mix) * small

    def predict(self, x_t: Tensor, t) -> tuple[Tensor, Tensor]:
        """The denoiser's estimates (x0_hat, eps_hat) of the signal and the noise in ``x_t`` at step(s)
        ``t``. The network predicts v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
        (Salimans & Ho, 2022), from which both follow without dividing by sqrt(alpha_bar_t) or
        sqrt(1 - alpha_bar_t): bounded at every t, where a noise prediction blows up the mean at
        a last step with beta_T near 1 (the cosine schedule at small T)."""
        v = self.network(x_t, t)
        ab = self._at(self.alpha_bar, t, x_t)
        return ab.sqrt() * x_t - (1 - ab).sqrt() * v, (1 - ab).sqrt() * x_t + ab.sqrt() * v

    def reverse_moments(self, x_t: Tensor, t) -> tuple[Tensor, Tensor]:
        """(mean, log variance) of p(x_{t-1} | x_t), t >= 2: the forward posterior's mean
        q(x_{t-1} | x_t, x_0 = x0_hat) and log sigma_t^2 (which broadcasts against ``x_t`` when
        ``t`` is a tensor of per-point steps)."""
        x0, _ = self.predict(x_t, t)
        mean, _ = self.forward_posterior_signal(x_t, x0, t)
        log_var = self.reverse_log_variance(t)
        if not isinstance(t, int):
            log_var = log_var.reshape(*t.shape, *(1,) * (x_t.dim() - t.dim()))
        return mean, log_var

    def reverse_step(self, x_t: Tensor, t: int) -> dist.Distribution:
        """p(x_{t-1} | x_t) for t >= 2."""
        mean, log_var = self.reverse_moments(x_t, t)
        return dist.Normal(mean, (0.5 * log_var).exp()).to_event(len(self.data_shape))

    def prior(self) -> dict[str, Tensor]:
        T = self.num_steps
        x_t = pyro.sample(site_name(T), standard_normal(self.data_shape, like=self._zero))
        values = {site_name(T): x_t}
        for t in range(T, 1, -1):
            x_t = values[site_name(t - 1)] = pyro.sample(site_name(t - 1), self.reverse_step(x_t, t))
        return values

    def likelihood(self, latents: dict[str, Tensor]) -> dist.Distribution:
        return self.observation(self.network(latents[site_name(1)], 1, head="decoder"))

    def likelihood_log_prob(self, latents: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.observation.log_prob(self.network(latents[site_name(1)], 1, head="decoder"), x)

    # --- representation -----------------------------------------------------------------------

    def ddim_latent(self, x: Tensor) -> Tensor:
        """The deterministic DDIM latent of ``x`` (Song, Meng & Ermon, 2021), shape ``(N, *data_shape)``.

        x_1 = sqrt(alpha_bar_1) s(x) (the mean of q(x_1 | x)); then for t = 2..T the
        deterministic (eta = 0) step x_t = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps_hat,
        with (x0_hat, eps_hat) the denoiser's estimates from x_{t-1} at step t (:meth:`predict`).
        Running the same steps backwards decodes it (approximately, at small T)."""
        x_t = self.alpha_bar[0].sqrt() * self.signal(x)
        for t in range(2, self.num_steps + 1):
            x0, eps = self.predict(x_t, t)
            ab = self.alpha_bar[t - 1]
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        return x_t

    def guide_problem(self, guide_name: str) -> str | None:
        if guide_name in self.supported_guides:
            return None
        return (
            f"model 'diffusion' pairs with its fixed forward noising process '{FORWARD_GUIDE}' (or "
            f"'prior', the importance-sampling baseline); a learned guide over x_1..x_T is possible in "
            f"principle (Kingma et al. 2021 learn only the schedule), but the zoo supports only these"
        )

"""Data-parallel training on torch.distributed: per-rank shards, DistributedDataParallel, rank-0 output.

Launch with ``torchrun --nproc_per_node=N -m pyro_genmod train --distributed ...`` (and
``--nnodes``, ``--rdzv-endpoint`` across machines). Every rank holds the whole model and guide.
Each step takes one global minibatch of ``N * batch_size`` points from the epoch's permutation
(identical on every rank, since the data-order generator has the same seed), shards it the way
:class:`torch.utils.data.DistributedSampler` does (padding by wrapping around, then rank ``r``
takes positions ``r, r + N, ...``), and computes the loss of its shard through
:class:`LossModule` wrapped in :class:`torch.nn.parallel.DistributedDataParallel` (DDP), which
broadcasts rank 0's parameters when it is built and all-reduces the gradients in buckets,
overlapped with the backward pass.

DDP *averages* the ranks' gradients, while the objective is a *sum* over the batch. The loss
each rank differentiates is therefore multiplied by the world size (:meth:`DataParallel.wrap`
sets :attr:`LossModule.scale`): the average of ``N`` times the shards' gradients is their sum,
which is exactly the gradient a single process computes on the global batch (to float rounding
of the summation order; multiplying and dividing by a power of two is exact). The loss *value*
is not scaled: :meth:`DataParallel.sum` adds the shards' values into the global batch's.

Parameters a step does not use: DDP is built with ``find_unused_parameters=True`` when the set
of parameters a step uses can change from step to step (see :func:`parameter_use_may_vary`): a
plain Pyro program may branch on its data, and the ``local`` guide uses its per-point
parameters only on minibatches holding points it refined (and otherwise leaves one, possibly
empty, parameter unused). DDP then marks the parameters a rank did not use as ready, so every
rank all-reduces every gradient and takes the same update. Otherwise it is built without that
search (which walks the autograd graph every step).

Buffers: DDP broadcasts rank 0's buffers when it is built, and by default again before every
forward. The zoo's buffers do not change during training (a zero, flow masks and permutations,
label logits, a fixed Gaussian scale; the autoencoder's code distribution and the ``local``
guide's points are set outside ``fit``), so that per-step broadcast is skipped unless training
can change a buffer
(:func:`buffers_may_change`: a plain Pyro program, or a module tracking running statistics such
as batch normalization); benchmarks/results/scale.md measures what it costs.

Only rank 0 writes files and shows a progress bar. The gloo backend runs on the CPU, NCCL on
the GPU (each rank on the GPU ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError

__all__ = [
    "DataParallel",
    "LossModule",
    "buffers_may_change",
    "init_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "parameter_use_may_vary",
]

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its rendezvous variables are set)."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


def is_main_process() -> bool:
    """True outside torch.distributed, and on rank 0 inside it."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclass
class DataParallel:
    """The process group a fit runs in, and the few collectives data parallelism needs.

    Arguments:
        rank: this process's rank.
        world_size: the number of processes.
        device: where collective buffers live (the GPU for NCCL, the CPU for gloo).
    """

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def current(cls) -> DataParallel:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "distributed=True needs an initialized torch.distributed process group; launch "
                "with torchrun and pass --distributed (or call init_distributed() first)"
            )
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def pad(self, order: Tensor) -> Tensor:
        """Wrap ``order`` around so its length divides by the world size (DistributedSampler's
        ``drop_last=False`` padding); every rank then gets the same number of points."""
        extra = -len(order) % self.world_size
        return torch.cat([order, order[:extra]]) if extra else order

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's rows of a global batch: positions ``rank, rank + world_size, ...``."""
        return batch[self.rank :: self.world_size]

    def sum(self, value: float) -> float:
        """The sum of a float over all ranks (every rank gets the same result)."""
        buffer = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return float(buffer)

    def mean_over_shards(self, per_point_mean, x: Tensor) -> float:
        """``per_point_mean(x)`` (a mean over rows) computed on each rank's shard of ``x`` and
        combined, so ranks split the work and all get the same value."""
        local = self.shard(x)
        return self.sum(per_point_mean(local) * local.shape[0] if local.shape[0] else 0.0) / x.shape[0]

    def wrap(self, module: LossModule) -> DistributedDataParallel:
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel`, its loss scaled by the
        world size so that DDP's average of the gradients is their sum (see the module docstring).

        Building it broadcasts rank 0's parameters and buffers to every rank (and checks that all
        ranks hold parameters of the same shapes), so all replicas start identical. DDP searches
        for unused parameters when :func:`parameter_use_may_vary` and re-broadcasts the buffers
        before every step when :func:`buffers_may_change`.

        Arguments:
            module: the loss of the model/guide pair; its parameters must all exist (a plain
                Pyro program's are created when it is traced, before training).
        """
        module.scale = float(self.world_size)
        device_ids = [self.device] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(
            module, device_ids=device_ids,
            find_unused_parameters=parameter_use_may_vary(module.model, module.guide),
        )
        # set after the build, which broadcasts the buffers either way (an attribute before torch
        # 2.13, a property for forward_sync_buffers since)
        wrapped.broadcast_buffers = buffers_may_change(module.model, module.guide)
        return wrapped

    def gather_rng_states(self) -> dict[str, Tensor]:
        """Every rank's torch RNG state (each rank draws its own latent noise)."""
        state = torch.get_rng_state().to(self.device)
        states = [torch.empty_like(state) for _ in range(self.world_size)]
        dist.all_gather(states, state)
        return {f"rng.rank.{r}": s.cpu() for r, s in enumerate(states)}


class LossModule(nn.Module):
    """A model, its guide and the objective in one module whose ``forward`` is the loss: the shape
    of Pyro's ``ELBOModule`` (``pyro.infer.elbo``), which is what DDP wraps.

    The model and guide are submodules, so the module's parameters (and buffers) are the pair's,
    each once. ``loss(x, step)`` computes the objective on the minibatch ``x`` at the 0-based
    global step ``step`` (the KL schedule depends on it) and returns ``(differentiable, value)``
    like the library's objectives; ``forward`` returns the differentiable loss times
    :attr:`scale` (1 in one process, the world size under DDP) and the unscaled value as a
    float64 tensor.
    """

    def __init__(self, model: nn.Module, guide: nn.Module, loss: Callable[[Tensor, int], tuple[Tensor, float]]):
        super().__init__()
        self.model, self.guide = model, guide
        self.loss = loss
        self.scale = 1.0

    def forward(self, x: Tensor, step: int) -> tuple[Tensor, Tensor]:
        differentiable, value = self.loss(x, step)
        if self.scale != 1.0:
            differentiable = differentiable * self.scale
        return differentiable, torch.tensor(value, dtype=torch.float64)


def _is_program(model: nn.Module, guide: nn.Module) -> bool:
    from .programs import ProgramGuide, ProgramModel

    return isinstance(model, ProgramModel) or isinstance(guide, ProgramGuide)


def parameter_use_may_vary(model: nn.Module, guide: nn.Module) -> bool:
    """Whether the set of parameters a training step uses can change from step to step, so that
    DDP needs ``find_unused_parameters=True``: when the model or guide is a plain Pyro program
    (its code may branch on the data), or the guide holds per-point parameters
    (``local_params``, the ``local`` guide, which uses them only on points it refined)."""
    return _is_program(model, guide) or hasattr(guide, "local_params")


def buffers_may_change(model: nn.Module, guide: nn.Module) -> bool:
    """Whether training can change the pair's buffers, so that DDP re-broadcasts rank 0's before
    every step: when the model or guide is a plain Pyro program (its networks are the user's) or
    holds a module tracking running statistics (``track_running_stats``, batch normalization)."""
    return _is_program(model, guide) or any(
        getattr(m, "track_running_stats", False) for part in (model, guide) for m in part.modules()
    )


def init_distributed(backend: str | None = None) -> DataParallel:
    """Join the process group that ``torchrun`` set up; gloo on the CPU, NCCL with a GPU.

    Arguments:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if not launched_by_torchrun():
            raise ConfigError(
                "--distributed needs the rendezvous variables torchrun sets (RANK, WORLD_SIZE, "
                "MASTER_ADDR, MASTER_PORT); launch with: torchrun --nproc_per_node=N -m "
                "pyro_genmod train --distributed ..."
            )
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DataParallel.current()

"""Data-parallel training on torch.distributed: per-rank shards, summed gradients, rank-0 output.

Launch with ``torchrun --nproc_per_node=N -m pyro_genmod train --distributed ...``. Every rank
holds the whole model and guide. Each step takes one global minibatch of ``N * batch_size``
points from the epoch's permutation (identical on every rank, since the data-order generator
has the same seed), shards it the way :class:`torch.utils.data.DistributedSampler` does
(padding by wrapping around, then rank ``r`` takes positions ``r, r + N, ...``), and sums the
ranks' gradients with one all-reduce. The objective is a sum over the batch, so the summed
gradient is exactly the gradient a single process computes on the global batch; averaging
the per-rank gradients of per-point means would be the same update up to Adam's epsilon.
Only rank 0 writes files and shows a progress bar. The gloo backend runs on the CPU, NCCL on
the GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import ConfigError

__all__ = ["DataParallel", "init_distributed", "launched_by_torchrun", "is_main_process"]

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

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over ranks, in one flat all-reduce."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
            if p.grad is not None:
                p.grad.copy_(chunk.view_as(p.grad))

    def broadcast_parameters(self, modules) -> None:
        """Copy rank 0's parameters and buffers to every rank, so all start identical."""
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                buffer = tensor.data.to(self.device)
                dist.broadcast(buffer, src=0)
                tensor.data.copy_(buffer)

    def gather_rng_states(self) -> dict[str, Tensor]:
        """Every rank's torch RNG state (each rank draws its own latent noise)."""
        state = torch.get_rng_state().to(self.device)
        states = [torch.empty_like(state) for _ in range(self.world_size)]
        dist.all_gather(states, state)
        return {f"rng.rank.{r}": s.cpu() for r, s in enumerate(states)}


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
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return DataParallel.current()

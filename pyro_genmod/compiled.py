"""The training step's loss and gradients under ``torch.compile`` (``fit(..., compile=True)``).

What is compiled is the trace-free ELBO of :mod:`pyro_genmod.densities` for a pair that runs
the model and guide contracts' own programs, one particle: guide draw, prior, likelihood and
the sum, as one graph, with its backward graph compiled by AOTAutograd. The optimizer stays
torch's (fused Adam where torch has it), so its state, checkpoints and resume are unchanged.
Random draws keep torch's own generator (inductor's ``fallback_random``): the compiled step
draws the same latent noise as the eager step, and a checkpoint's RNG state resumes either.

Anything else (another objective, several particles, KL weights, DDP, labels, a Pyro program)
is refused by :func:`compile_refusal` with the reason, and a compilation that fails on its first
call falls back to the eager step with the random state rewound; :func:`fit` says which in one
warning line.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import Tensor

from . import densities
from .errors import ConfigError

__all__ = ["COMPILE_MODES", "CompiledLoss", "check_compile", "compile_refusal"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(value) -> str | None:
    """The ``torch.compile`` mode asked for: ``False``/``None`` none, ``True`` ``"default"``, or a
    mode by name; anything else raises :class:`ConfigError`."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ConfigError(f"compile must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES)}), got {value!r}")


def compile_refusal(loss_fn, model, guide, x: Tensor, *, weighted: bool, distributed: bool, labels: bool) -> str | None:
    """Why the step of this fit cannot be compiled, or ``None`` when it can."""
    name = getattr(loss_fn, "name", type(loss_fn).__name__)
    if name != "trace_elbo" or not getattr(loss_fn, "use_fast", False):
        return f"objective '{name}' has no trace-free loss to compile (only trace_elbo has)"
    if loss_fn.num_particles != 1:
        return "the compiled loss takes one particle per point"
    if weighted:
        return "beta, KL warm-up and free bits reweight Pyro's sites, which the compiled loss does not see"
    if distributed:
        return "under distributed=True the step runs inside DistributedDataParallel"
    if labels:
        return "a label-using model is fed its labels through a Pyro handler"
    if not densities._runs_contract_programs(model, guide):
        return "the pair does not run the model and guide contracts' own programs"
    if not densities.supports_fast_elbo(model, guide, x):
        return "a guide site is not reparameterized"
    return None


def _rng_state(device: torch.device):
    cuda = device.type == "cuda" and torch.cuda.is_initialized()
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cuda else None)


def _set_rng_state(state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class CompiledLoss:
    """The negative ELBO of ``model`` and ``guide`` summed over a batch, compiled with
    ``torch.compile(mode=mode)``; one graph per batch shape (the last batch of an epoch may be
    smaller). :attr:`compile_seconds` adds up the first call of each shape, compilation included."""

    def __init__(self, model, guide, mode: str = "default", backend: str = "inductor"):
        self.model, self.guide = model, guide
        if backend == "inductor":
            options = {**torch._inductor.list_mode_options(mode), "fallback_random": True}
            self.fn = torch.compile(self._loss, options=options, dynamic=False)
        else:  # another torch.compile backend (the tests use "aot_eager": same graphs, no code generation)
            self.fn = torch.compile(self._loss, backend=backend, dynamic=False)
        self.shapes: set = set()
        self.compile_seconds = 0.0

    def _loss(self, x: Tensor) -> Tensor:
        log_p, log_q = densities._contract_densities(self.model, self.guide, x)
        return (log_q - log_p).sum()

    def loss_and_grads(self, x: Tensor) -> Tensor | None:
        """The loss on ``x`` with its gradients added to the parameters' ``.grad``; ``None`` when
        compiling failed (one warning says why, the random state is as it was before the call and
        the caller takes the eager step)."""
        key = (tuple(x.shape), x.dtype, x.device)
        if key in self.shapes:
            with densities._Unvalidated():
                loss = self.fn(x)
            loss.backward()
            return loss
        state, start = _rng_state(x.device), time.perf_counter()
        try:
            with densities._Unvalidated(), warnings.catch_warnings():
                # The contract checks cached per class (functools.lru_cache) are pure functions of
                # the types; Dynamo tracing through them is what is wanted.
                warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
                loss = self.fn(x)
            loss.backward()
        except Exception as error:  # noqa: BLE001 - any compiler failure means: train eagerly
            _set_rng_state(state)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"compile=True: torch.compile failed ({type(error).__name__}: {first}); training eagerly",
                RuntimeWarning, stacklevel=3,
            )
            return None
        self.compile_seconds += time.perf_counter() - start
        self.shapes.add(key)
        return loss

"""Training by stochastic variational inference: Pyro's ELBO estimators, minibatches, Adam."""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
import torch.utils.data
from torch import Tensor
from tqdm.auto import tqdm

from .annealing import KLSchedule
from .callbacks import Callback, CallbackList, EpochEnd, FitEnd, FitStart, StepEnd
from .checkpoint import Checkpointer
from .checks import check_device, check_positive_int, check_training_memory
from .compiled import CompiledLoss, check_compile, compile_refusal
from .datasets import Dataset
from .densities import log_densities
from .distributed import DataParallel, LossModule
from .errors import ConfigError, DataError, TrainingDiverged
from .initialization import check_init, initialize
from .labels import LabelFeed, training_labels
from .latents import check_pair
from .objectives import get_objective
from .optim import (
    check_clip_grad_norm,
    create_lr_schedule,
    create_optimizer,
    load_schedule_state,
    schedule_state,
    step_schedule,
)
from .programs import as_guide, as_model
from .seeding import check_seed, seeded
from .threads import resolve_threads, torch_threads

__all__ = ["fit", "FitResult", "evaluate_elbo", "check_positive_int", "as_training_data"]

# Blow-up detection (see _Fit._check_loss_blowup and _Fit._check_validation_drop).
BLOWUP_WINDOW = 100  # steps in the running median of the per-point training loss
BLOWUP_FACTOR = 100  # "two orders of magnitude" above the median's scale
BLOWUP_STEPS = 3  # consecutive exploding steps before the fit is stopped


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, timing and why it stopped."""

    model: torch.nn.Module  # the library's view of the model (a ProgramModel for a Pyro program)
    guide: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    best_epoch: int | None = None
    stopped_reason: str = "completed"
    options: dict = field(default_factory=dict)
    threads: int | None = None  # torch threads the fit computed with
    compile_seconds: float | None = None  # first call of each compiled batch shape (None: eager)

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def parameters(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Distinct trainable parameters of the modules (a part shared by two is counted once)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


def evaluate_elbo(model, guide, x: Tensor, batch_size: int = 1024) -> float:
    """Mean single-sample ELBO per point on ``x`` (no gradients), whatever the training objective."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            log_p, log_q = log_densities(model, guide, x[start : start + batch_size], 1, per_point=True)
            total += float((log_p - log_q).sum())
    return total / x.shape[0]


def _recipe_name(part):
    """How an optimizer or schedule is recorded in the run's options (a name, JSON-able)."""
    if part is None or isinstance(part, str):
        return part
    return f"{getattr(part, '__module__', '?')}.{getattr(part, '__qualname__', repr(part))}"


def _snapshot(model, guide) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(guide.state_dict())


def fit(
    model,
    guide,
    data,
    *,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    objective: str | None = None,
    num_particles: int = 1,
    early_stopping: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    checkpoint: Checkpointer | str | None = None,
    resume: bool = False,
    distributed: bool = False,
    beta: float = 1.0,
    kl_warmup: int = 0,
    free_bits: float = 0.0,
    optimizer=None,
    optimizer_options: dict | None = None,
    lr_schedule=None,
    lr_schedule_options: dict | None = None,
    clip_grad_norm: float | None = None,
    init: str | None = None,
    callbacks: list[Callback] | None = None,
    compile: bool | str = False,
    threads: int | None = None,
) -> FitResult:
    """Fit ``model`` and ``guide`` to ``data.train`` by stochastic variational inference.

    Each step draws a minibatch (redrawn Bernoulli pixels under dynamic binarization), computes
    the objective with Pyro (``Trace_ELBO`` by default) and takes an Adam step on the model's
    and guide's parameters. The validation ELBO is computed every epoch.

    Arguments:
        model, guide: a model and a guide built for it (the pair is checked before training);
            either may be a plain Pyro program called as ``model(x)`` / ``guide(x)`` (see
            :mod:`pyro_genmod.programs`): its sites are found by tracing it on the data, and
            the parameters it registers with ``pyro.module`` or ``pyro.param`` are trained.
        data: a :class:`Dataset`, or a tensor (or numpy array) of training points of shape
            ``(N, *point_shape)``: a seeded permutation (``seed``) holds out the last 10% of
            the points (at least one) for the validation ELBO and the rest are trained on, as
            they are (no binarization). A ``DataLoader`` is refused: ``fit`` draws its own
            minibatches (pass the tensor and ``batch_size``).
        epochs: passes over the training set.
        batch_size: minibatch size; larger than the training set means full-batch steps.
        lr: Adam learning rate.
        seed: seeds minibatch order, binarization and latent noise.
        objective: ``trace_elbo``, ``tracemeanfield_elbo``, ``traceenum_elbo``,
            ``tracegraph_elbo``, ``iwae``, ``iwae_dreg`` (IWAE with the doubly
            reparameterized guide gradient) or ``diffusion_elbo``; ``None`` (the default) takes
            the model's ``default_objective`` (``diffusion_elbo`` for ``diffusion``), else
            ``trace_elbo``.
        num_particles: particles per point (K for ``iwae`` and ``iwae_dreg``).
        early_stopping: stop when the validation ELBO has not improved for this many epochs,
            and restore the best parameters.
        progress: show a tqdm progress bar with the ELBO.
        device: where to train (``"cpu"``, ``"cuda"``); default: where the model is.
        checkpoint: a run folder (or a :class:`Checkpointer`) to write a checkpoint to at the
            end of every epoch (and every N steps with ``Checkpointer(folder, every=N)``).
        resume: continue from the checkpoint in ``checkpoint``, bit for bit as if the fit
            had never stopped (same options required; ``epochs`` may grow).
        distributed: data-parallel over the initialized torch.distributed process group
            (see :mod:`pyro_genmod.distributed`); ``batch_size`` is per rank.
        beta, kl_warmup, free_bits: weight of the KL terms (beta-VAE), epochs over which it
            rises linearly from 0 (KL warm-up) and nats per latent site below which a site's
            KL is not penalized (free bits); see :class:`~pyro_genmod.annealing.KLSchedule`.
            They apply to any model with a Pyro ELBO objective.
        optimizer, optimizer_options: a ``torch.optim`` class or its name (default Adam, fused
            where torch can) and its keyword options, e.g. ``optimizer_options={"eps": 1e-4}``.
        lr_schedule, lr_schedule_options: a learning-rate schedule stepped at the end of every
            epoch: ``"burda"`` (Burda et al.'s 3^i epochs at ``lr * 10^(-i/7)``), ``"constant"``,
            any ``torch.optim.lr_scheduler`` class or its name, or a function of the optimizer
            (see :mod:`pyro_genmod.optim`).
        clip_grad_norm: clip the global norm of the gradients to this value at every step.
        init: re-initialize the networks before training (seeded by ``seed``): ``"glorot"``
            (Glorot-uniform weights, zero biases) or ``"burda"`` (that, and the decoder's output
            bias at the logits of the mean training pixel, as in Burda et al.'s code); see
            :mod:`pyro_genmod.initialization`. Default: the networks as they were built.
        callbacks: :class:`~pyro_genmod.callbacks.Callback` objects called at the start, every
            ``every_n_steps`` steps (loss, learning rate, gradient norm), at every epoch's end
            (train and validation ELBO, KL per latent site, seconds) and at the end; for
            example the loggers of :mod:`pyro_genmod.tracking`. Rank 0 only under
            ``distributed``. A callback that raises stops the fit with
            :class:`~pyro_genmod.errors.CallbackError` naming it; the last checkpoint is intact.
        compile: put the step's loss and its gradients under ``torch.compile`` (``True``, or a
            mode such as ``"reduce-overhead"``): the trace-free ELBO of a contract pair, one
            particle (see :mod:`pyro_genmod.compiled`); the optimizer, the random draws and the
            checkpoints are the eager step's. Where the step cannot be compiled, or compiling
            fails, the fit trains eagerly and warns once saying why. ``FitResult.compile_seconds``
            holds the compile time. Compiling takes tens of seconds: it pays on long fits.
        threads: torch threads to compute with during the fit (restored afterwards); ``None``
            takes :func:`~pyro_genmod.threads.default_threads`: torch's count lowered to the
            idle CPUs, so a fit beside other busy processes does not oversubscribe the cores.

    A label-using model (``uses_labels``, e.g. ``cvae``, ``m2``) gets ``y=data.train_labels``
    for each minibatch, and so does its guide when its ``forward`` takes ``y``.

    Returns:
        A :class:`FitResult`. If training diverges, the model and guide are restored to the last
        good state (the end of the previous epoch) and :class:`TrainingDiverged` is raised,
        carrying the result so far. Divergence is: a NaN or infinite loss or validation ELBO; a
        per-point training loss more than 100 times the scale of its running median (at least
        10 nats) for 3 steps in a row; or a validation ELBO more than
        ``max(50, 10 * (best - first), |best| / 2)`` nats below the best so far, where ``first``
        is the first epoch's.
    """
    data = as_training_data(data, seed)
    with torch_threads(resolve_threads(threads)) as count:
        run = _Fit(
        model, guide, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, objective=objective,
        num_particles=num_particles, early_stopping=early_stopping, device=device, checkpoint=checkpoint,
        distributed=distributed, beta=beta, kl_warmup=kl_warmup, free_bits=free_bits, optimizer=optimizer,
        optimizer_options=optimizer_options, lr_schedule=lr_schedule, lr_schedule_options=lr_schedule_options,
            clip_grad_norm=clip_grad_norm, init=init, compile=compile,
        )
        run.result.threads = count
        if resume:
            run.restore()
        return run.train(progress, callbacks)


class _Fit:
    """One call of :func:`fit`, in parts: the setup (checks, device, optimizer, options), the
    data order, one optimizer step, the end-of-epoch validation and the checkpoint."""

    def __init__(
        self, model, guide, data, *, epochs, batch_size, lr, seed, objective, num_particles, early_stopping,
        device, checkpoint, distributed, beta, kl_warmup, free_bits, optimizer, optimizer_options, lr_schedule,
        lr_schedule_options, clip_grad_norm, init=None, compile=False,
    ):
        model = as_model(model, data)
        guide = as_guide(guide, model, data)
        check_positive_int("epochs", epochs)
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_particles", num_particles)
        check_seed(seed)
        if early_stopping is not None:
            check_positive_int("early_stopping", early_stopping)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"the learning rate must be a positive number, got {lr!r}")
        self.clip_grad_norm = check_clip_grad_norm(clip_grad_norm)
        check_init(init)
        check_pair(model, guide)
        mode = check_compile(compile)
        if objective is None:
            objective = getattr(model, "default_objective", None) or "trace_elbo"
        self.loss_fn = get_objective(objective, num_particles)
        _check_data(model, data)

        if distributed:
            self.loss_fn.check_data_parallel()  # before the process group: an objective may refuse
        self.ddp = ddp = DataParallel.current() if distributed else None
        if device is None and ddp is not None and ddp.device.type == "cuda":
            device = ddp.device  # under NCCL each rank trains on its own GPU
        device = check_device(device) if device is not None else next(
            (p.device for p in model.parameters()), torch.device("cpu")
        )
        check_training_memory(model, guide, min(batch_size, data.train.shape[0]), num_particles, device)
        model.to(device)
        guide.to(device)
        self.model, self.guide, self.data, self.device = model, guide, data, device
        self.train_x, self.val_x = data.train.to(device), data.val.to(device)
        if init is not None:  # before DDP broadcasts rank 0's parameters; a resume overwrites them
            initialize(model, guide, self.train_x, init, seed=seed)
        self.world = ddp.world_size if ddp else 1
        pyro.set_rng_seed(seed + (ddp.rank if ddp else 0))  # ranks draw different latent noise
        self.generator = torch.Generator(device=device).manual_seed(seed)  # same data order on all ranks
        # The pair and its objective as one module whose forward is the loss; under DDP wrapped in
        # DistributedDataParallel, which broadcasts rank 0's parameters now and sums the gradients.
        self.objective = LossModule(model, guide, self._loss)
        if ddp:
            self.objective = ddp.wrap(self.objective)
        self.params = parameters(model, guide)
        self.optimizer = create_optimizer(self.params, lr, optimizer, optimizer_options)
        self.scheduler = create_lr_schedule(self.optimizer, lr_schedule, lr_schedule_options)
        self.epochs, self.batch_size, self.early_stopping = epochs, batch_size, early_stopping
        options = dict(
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, objective=objective,
            num_particles=num_particles, early_stopping=early_stopping,
            beta=beta, kl_warmup=kl_warmup, free_bits=free_bits,
        )
        recipe = dict(
            optimizer=_recipe_name(optimizer), optimizer_options=optimizer_options or None,
            lr_schedule=_recipe_name(lr_schedule), lr_schedule_options=lr_schedule_options or None,
            clip_grad_norm=self.clip_grad_norm, init=init,
        )
        options.update({k: v for k, v in recipe.items() if v is not None})  # absent when default
        if ddp:
            options["world_size"] = self.world
        self.options = options
        self.result = FitResult(model=model, guide=guide, options=options)
        self.num_train = self.train_x.shape[0] + (-self.train_x.shape[0] % self.world)  # padded like DistributedSampler
        self.steps_per_epoch = math.ceil(self.num_train / (batch_size * self.world))
        self.kl_schedule = KLSchedule.per_epoch(beta, kl_warmup, free_bits, self.steps_per_epoch)
        labels = training_labels(model, data)
        self.labels = labels.to(device) if labels is not None else None
        self.feed = LabelFeed()
        self.model_fn, self.guide_fn = (
            (self.feed.bind(model), self.feed.bind(guide)) if self.labels is not None else (model, guide)
        )
        self.compiled = self._compiled_loss(mode) if mode is not None else None
        self.last_good = _snapshot(model, guide)
        self.best = (-math.inf, self.last_good)
        self.recent_losses: deque[float] = deque(maxlen=BLOWUP_WINDOW)  # per-point losses of recent steps
        self.exploding = 0  # consecutive steps whose loss is far above their running median
        self.initial_val_elbo: float | None = None  # the untrained pair's, measured when training starts
        self.seed, self.beta, self.kl_warmup = seed, beta, kl_warmup
        self.saver = Checkpointer(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        self.first_epoch, self.skip, self.order, self.epoch_loss, self.elapsed = 1, 0, None, 0.0, 0.0
        self.resumed = False

    def _compiled_loss(self, mode: str) -> CompiledLoss | None:
        """The compiled loss of this fit, or ``None`` (with a warning saying why) where the step
        cannot be compiled."""
        why = compile_refusal(
            self.loss_fn, self.model, self.guide, self.train_x[:1], weighted=not self.kl_schedule.is_identity,
            distributed=self.ddp is not None, labels=self.labels is not None,
        )
        if why is not None:
            warnings.warn(f"compile=True: {why}; training eagerly", RuntimeWarning, stacklevel=4)
            return None
        self.result.compile_seconds = 0.0
        return CompiledLoss(self.model, self.guide, mode)

    # --- checkpointing ---------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the checkpoint: parameters, optimizer, schedule, RNGs, data order, history."""
        if self.saver is None:
            raise ConfigError("resume=True needs checkpoint=<run folder> to resume from")
        r = self.saver.restore(self.model, self.guide, self.optimizer, self.generator, self.options, self.ddp,
                               objective=self.loss_fn)
        load_schedule_state(self.scheduler, r.schedule)
        self.first_epoch, self.skip, self.order, self.epoch_loss, self.elapsed = r.epoch, r.step, r.order, r.epoch_loss, r.seconds
        self.result.history, self.result.best_epoch = r.history, r.best_epoch
        self.last_good = r.last_good or _snapshot(self.model, self.guide)
        self.best = (r.best_value, r.best or self.last_good)
        self.initial_val_elbo = r.initial_val_elbo
        self.resumed = True

    def save(self, next_epoch: int, next_step: int) -> None:
        """Checkpoint the fit as it stands before step ``next_step`` of epoch ``next_epoch``."""
        progress = dict(
            epoch=next_epoch, step=next_step, epoch_loss=self.epoch_loss, history=self.result.history,
            seconds=time.perf_counter() - self.start, best_epoch=self.result.best_epoch, best_value=self.best[0],
            options=self.options, schedule=schedule_state(self.scheduler),
            initial_val_elbo=self.initial_val_elbo,
        )
        mid_epoch = next_step > 0
        self.saver.save(
            self.model, self.guide, self.optimizer, self.generator, progress,
            order=self.order if mid_epoch else None, last_good=self.last_good if mid_epoch else None,
            best=self.best[1] if self.early_stopping else None, ddp=self.ddp, objective=self.loss_fn,
        )

    # --- data order, the step, validation -----------------------------------------------------

    def batches(self):
        """``(step, rows)`` of this epoch's minibatches (the epoch's order is drawn once and kept,
        so a checkpoint taken mid-epoch resumes the same order), skipping steps done before a resume."""
        if self.order is None:
            self.order = torch.randperm(self.train_x.shape[0], generator=self.generator, device=self.device)
        order = self.ddp.pad(self.order) if self.ddp else self.order
        for step, index in enumerate(order.split(self.batch_size * self.world)):
            if step >= self.skip:  # steps before it were done before the checkpoint this fit resumed from
                yield step, index

    def step(self, epoch: int, step: int, index: Tensor) -> float:
        """One optimizer step on the minibatch ``index``; returns the loss (summed over the batch)."""
        ddp = self.ddp
        batch = self.data.training_batch(self.train_x[index], self.generator)
        if ddp:  # binarize the global batch, so the draws match one process, then shard
            batch = ddp.shard(batch)
        if self.labels is not None:
            self.feed.y = ddp.shard(self.labels[index]) if ddp else self.labels[index]
        loss = self._compiled_step(batch) if self.compiled is not None else None
        if loss is not None:  # its gradients are already in place
            differentiable, value = None, float(loss.detach())
        else:
            differentiable, value = self.objective(batch, (epoch - 1) * self.steps_per_epoch + step)
            value = ddp.sum(float(value)) if ddp else float(value)
        if not math.isfinite(value):
            self._diverged(
                f"non-finite loss ({value}) at epoch {epoch}, step {step + 1}",
                f"training stopped: the loss became {value} at epoch {epoch}, step {step + 1}; parameters "
                f"were restored to {_restored_to(epoch)} (try a smaller learning rate than {self.options['lr']})",
            )
        self._check_loss_blowup(epoch, step, value / max(1, index.shape[0]))
        if differentiable is not None:
            self.optimizer.zero_grad(set_to_none=True)
            differentiable.backward()  # under DDP, the gradients are summed over the ranks here
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        self.optimizer.step()
        return value

    def _compiled_step(self, batch: Tensor) -> Tensor | None:
        """The compiled loss on ``batch`` with its gradients in place; ``None`` (and eager from
        then on) when compiling failed."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.compiled.loss_and_grads(batch)
        if loss is None:
            self.compiled, self.result.compile_seconds = None, None
        else:
            self.result.compile_seconds = self.compiled.compile_seconds
        return loss

    def _loss(self, batch: Tensor, global_step: int) -> tuple[Tensor, float]:
        """The objective on ``batch`` with the KL schedule of ``global_step`` (the loss of
        :class:`LossModule`)."""
        return self.kl_schedule(self.loss_fn, self.model_fn, self.guide_fn, batch, step=global_step)

    def validate(self, epoch: int) -> bool:
        """Score the validation set, record the epoch, keep the best state; ``False`` when
        early stopping ends the fit (the best parameters are then restored)."""
        model, guide, result = self.model, self.guide, self.result
        val_elbo = self.val_elbo()
        record = {
            "epoch": epoch,
            "train_elbo": -self.epoch_loss / self.num_train,
            "val_elbo": val_elbo,
            "seconds": time.perf_counter() - self.start,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        result.history.append(record)
        self.bar.set_postfix(train_elbo=f"{record['train_elbo']:.2f}", val_elbo=f"{val_elbo:.2f}")
        if self.callbacks:  # before the checkpoint: a resumed fit reports this epoch again if it was not saved
            event = EpochEnd(dict(record), epoch * self.steps_per_epoch, model, guide, self.val_x, self.seed)
            self.callbacks.call("on_epoch_end", event, result=result)
        if not math.isfinite(val_elbo):
            self._diverged(
                f"non-finite validation ELBO at epoch {epoch}",
                f"training stopped: the validation ELBO became {val_elbo} at epoch {epoch}; parameters "
                f"were restored to {_restored_to(epoch)} (try a smaller learning rate than {self.options['lr']})",
            )
        self._check_validation_drop(epoch, val_elbo)
        self.last_good = _snapshot(model, guide)
        if val_elbo > self.best[0]:
            self.best = (val_elbo, self.last_good)
            result.best_epoch = epoch
        elif self.early_stopping is not None and epoch - result.best_epoch >= self.early_stopping:
            model.load_state_dict(self.best[1][0]), guide.load_state_dict(self.best[1][1])
            result.stopped_reason = (
                f"early stopping: no validation improvement for {self.early_stopping} epochs; "
                f"restored epoch {result.best_epoch}"
            )
            return False
        if self.scheduler is not None:
            step_schedule(self.scheduler, val_elbo)
        return True

    def val_elbo(self) -> float:
        """The validation ELBO per point (the pair is left in eval mode)."""
        model, guide = self.model, self.guide
        model.eval(), guide.eval()
        if self.ddp:
            return self.ddp.mean_over_shards(lambda x: evaluate_elbo(model, guide, x), self.val_x)
        return evaluate_elbo(model, guide, self.val_x)

    def _check_loss_blowup(self, epoch: int, step: int, loss: float) -> None:
        """Stop when the per-point training loss has been more than 100 times the scale of its
        running median (over the last ``BLOWUP_WINDOW`` steps; the scale is at least 10 nats) for
        ``BLOWUP_STEPS`` steps in a row: the parameters were thrown far off (a learning rate far
        too large), even though the loss is still finite. A single outlying batch is not enough."""
        if self.recent_losses:
            median = statistics.median(self.recent_losses)
            if loss - median > BLOWUP_FACTOR * max(abs(median), 10.0):
                self.exploding += 1
                if self.exploding >= BLOWUP_STEPS:
                    self._diverged(
                        f"diverged: the training loss exploded at epoch {epoch}, step {step + 1}",
                        f"training diverged: the training loss reached {loss:.4g} nats per point at epoch "
                        f"{epoch}, step {step + 1}, over {BLOWUP_FACTOR} times its running median "
                        f"({median:.4g}) for {BLOWUP_STEPS} steps in a row; parameters were restored to "
                        f"{_restored_to(epoch)} (try a smaller learning rate than {self.options['lr']})",
                    )
                return  # an exploding step does not enter the median
        self.exploding = 0
        self.recent_losses.append(loss)

    def _check_validation_drop(self, epoch: int, val_elbo: float) -> None:
        """Stop when the validation ELBO has blown up (not during KL warm-up, whose objective is
        not the ELBO):

        - it is more than ``max(50, |initial|)`` nats below the untrained pair's ``initial``
          (training made the model far worse than doing nothing; checked when ``beta >= 1``);
        - or it fell more than ``max(50, 10 * (best - initial), |best| / 2)`` nats below the best
          so far: far more than epoch-to-epoch noise or the progress training has made
          (``initial`` is the first epoch's when the untrained value is unknown).
        """
        if epoch <= self.kl_warmup:
            return
        initial = self.initial_val_elbo
        if initial is not None and self.beta >= 1 and val_elbo < initial - max(50.0, abs(initial)):
            self._diverged(
                f"diverged: the validation ELBO fell far below the untrained model's at epoch {epoch}",
                f"training diverged: the validation ELBO fell to {val_elbo:.4g} at epoch {epoch}, far below "
                f"the untrained model's {initial:.4g}; parameters were restored to {_restored_to(epoch)} "
                f"(try a smaller learning rate than {self.options['lr']})",
            )
        earlier = [r["val_elbo"] for r in self.result.history[:-1]]
        if not earlier:
            return
        first, best = (initial if initial is not None else earlier[0]), max(earlier)
        allowed = max(50.0, 10.0 * (best - first), 0.5 * abs(best))
        if val_elbo < best - allowed:
            best_epoch = self.result.history[earlier.index(best)]["epoch"]
            self._diverged(
                f"diverged: the validation ELBO fell {best - val_elbo:.4g} nats below its best at epoch {epoch}",
                f"training diverged: the validation ELBO fell to {val_elbo:.4g} at epoch {epoch}, "
                f"{best - val_elbo:.4g} nats below its best ({best:.4g}, epoch {best_epoch}; more than the "
                f"{allowed:.4g} allowed); parameters were restored to {_restored_to(epoch)} (try a smaller "
                f"learning rate than {self.options['lr']}, or early_stopping)",
            )

    def _diverged(self, reason: str, message: str) -> None:
        self.model.load_state_dict(self.last_good[0]), self.guide.load_state_dict(self.last_good[1])
        self.result.stopped_reason = reason
        self.result.train_seconds = time.perf_counter() - self.start
        raise TrainingDiverged(message, self.result)

    # --- the loop --------------------------------------------------------------------------

    def train(self, progress: bool, callbacks=None) -> FitResult:
        ddp, spe = self.ddp, self.steps_per_epoch
        self.callbacks = CallbackList(callbacks, enabled=ddp is None or ddp.is_main)
        self.start = time.perf_counter() - self.elapsed
        if not self.resumed:
            with seeded(self.seed):  # leaves the random streams of training as they were
                self.initial_val_elbo = self.val_elbo()
            if not math.isfinite(self.initial_val_elbo):
                self.initial_val_elbo = None
        if self.callbacks:
            self.callbacks.call("on_fit_start", FitStart(
                dict(self.options), self.model, self.guide, self.data, spe, self.first_epoch,
                (self.first_epoch - 1) * spe + self.skip, list(self.result.history), self.resumed,
            ), result=self.result)
        total = self.epochs * spe
        self.bar = tqdm(
            total=total, initial=min((self.first_epoch - 1) * spe + self.skip, total),
            disable=None if progress and (ddp is None or ddp.is_main) else True, unit="step", leave=False,
        )
        error = None
        try:
            for epoch in range(self.first_epoch, self.epochs + 1):
                self.model.train(), self.guide.train()
                for step, index in self.batches():
                    loss = self.step(epoch, step, index)
                    self.epoch_loss += loss
                    self.bar.update(1)
                    if self.callbacks and (due := self.callbacks.due((epoch - 1) * spe + step + 1)):
                        self._step_end(due, epoch, step, loss / max(1, index.shape[0]))
                    if self.saver is not None and self.saver.due((epoch - 1) * spe + step + 1):
                        self.save(epoch, step + 1)
                if not self.validate(epoch):
                    break
                self.order, self.skip, self.epoch_loss = None, 0, 0.0
                if self.saver is not None:
                    self.save(epoch + 1, 0)
        except BaseException as caught:
            error = caught
            raise
        finally:
            self.bar.close()
            self.result.train_seconds = time.perf_counter() - self.start
            if self.callbacks:
                self.model.eval(), self.guide.eval()
                self.callbacks.end(FitEnd(self.result, error))
        self.model.eval(), self.guide.eval()
        return self.result

    def _step_end(self, due: list, epoch: int, step: int, loss: float) -> None:
        """Call ``on_step`` of the callbacks ``due`` after a step (its gradients are still held)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
        event = StepEnd(
            epoch, step + 1, (epoch - 1) * self.steps_per_epoch + step + 1, loss,
            self.optimizer.param_groups[0]["lr"], norm,
        )
        self.callbacks.call("on_step", event, due, result=self.result)


VAL_FRACTION = 0.1  # of a tensor of points given to fit, held out for the validation ELBO


def as_training_data(data, seed: int = 0) -> Dataset:
    """``data`` as a :class:`Dataset`: a dataset as it is; a tensor or numpy array of points
    split by a permutation seeded with ``seed`` into training points and the last 10% (at least
    one) for validation, used as they are (the validation points also fill the unused test
    split). Anything else raises :class:`ConfigError`."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, np.ndarray) and np.issubdtype(data.dtype, np.number):
        data = torch.as_tensor(data, dtype=torch.float32)
    if not isinstance(data, Tensor):
        kind = type(data).__name__
        hint = " (fit draws its own minibatches: pass the tensor of points and batch_size=)" if isinstance(
            data, torch.utils.data.DataLoader) else ""
        raise ConfigError(
            f"fit needs a Dataset (pg.load_dataset) or a tensor of training points of shape (N, ...), "
            f"got a {kind}{hint}"
        )
    if data.ndim < 2 or data.shape[0] < 2:
        raise DataError(
            f"fit needs a tensor of at least 2 points of shape (N, *point_shape), got shape {tuple(data.shape)}"
        )
    x = data.detach().to(torch.get_default_dtype()) if not data.is_floating_point() else data.detach()
    num_val = max(1, round(VAL_FRACTION * x.shape[0]))
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    train, val = x[order[:-num_val]], x[order[-num_val:]]
    return Dataset(
        name="tensor", train=train, val=val, test=val,
        options={"points": x.shape[0], "val_fraction": VAL_FRACTION, "seed": seed},
    )


def _restored_to(epoch: int) -> str:
    return "their initial values" if epoch <= 1 else f"the end of epoch {epoch - 1}"


def _check_data(model, data) -> None:
    """The training and validation points fit the model (a dynamically binarized training set
    is checked on one binarized draw)."""
    train = data.train
    if data.binarization == "dynamic":
        if bool(((train < 0) | (train > 1)).any()):
            raise DataError("dynamic binarization needs training intensities in [0, 1]")
        model.validate_data(torch.bernoulli(train[:1].clamp(0, 1)), "training data")
    else:
        model.validate_data(train, "training data")
    model.validate_data(data.val, "validation data")

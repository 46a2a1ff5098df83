"""``tensorboard``: scalars and image grids in TensorBoard event files (torch's SummaryWriter)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from pyro import poutine

from ..callbacks import EpochEnd, FitStart, StepEnd
from ..seeding import seeded
from ..tasks import sample
from .base import Logger, RunInfo, register_logger

__all__ = ["TensorBoardLogger"]


@register_logger("tensorboard")
class TensorBoardLogger(Logger):
    """TensorBoard event files under ``folder/tensorboard/`` (``tensorboard --logdir FOLDER``).

    Two TensorBoard runs, one per x axis:

    - ``tensorboard/step``: ``step/loss`` (the objective per point), ``step/lr`` and
      ``step/grad_norm`` every ``every_n_steps`` optimizer steps, at the global step;
    - ``tensorboard/epoch``: ``epoch/train_elbo``, ``epoch/val_elbo``, ``epoch/seconds``,
      ``epoch/lr`` and ``kl/<site>`` (KL per latent site on the validation set) at the epoch
      number, and for image data the grids ``samples`` (E[x|z], z ~ p(z)) and
      ``reconstructions`` (validation images above E[x|z], z ~ q(z|x)) every ``image_every``
      epochs (torchvision's ``make_grid``).

    Each writer starts with TensorBoard's purge marker at the first step it will write
    (``purge_step``), so the events a killed process wrote past the checkpoint a fit resumes from
    are dropped when TensorBoard reads the folder: no step is shown twice.
    """

    name = "tensorboard"
    extra = "tensorboard"
    module = "torch.utils.tensorboard"

    def __init__(self, folder, *, every_n_steps: int | None = 50, image_every: int | None = 10, num_images: int = 16):
        super().__init__(folder, every_n_steps=every_n_steps)
        self.log_dir = self.folder / "tensorboard"
        self.image_every, self.num_images = image_every, num_images
        self.writers: dict = {}

    @classmethod
    def for_run(cls, run: RunInfo) -> TensorBoardLogger:
        return cls(run.folder, every_n_steps=run.every_n_steps)

    def on_fit_start(self, event: FitStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.finish()  # a logger used for a second fit starts new files
        self.data, self.seed = event.data, event.options.get("seed", 0)
        firsts = {"step": event.global_step + 1, "epoch": len(event.history) + 1}
        for axis, first in firsts.items():
            log_dir = self.log_dir / axis
            _after_existing_files(log_dir)
            self.writers[axis] = SummaryWriter(str(log_dir), purge_step=first, flush_secs=30)

    def on_step(self, event: StepEnd) -> None:
        writer, step = self.writers["step"], event.global_step
        writer.add_scalar("step/loss", event.loss, step)
        writer.add_scalar("step/lr", event.lr, step)
        writer.add_scalar("step/grad_norm", event.grad_norm, step)

    def on_epoch_end(self, event: EpochEnd) -> None:
        writer, epoch, record = self.writers["epoch"], event.epoch, event.record
        for key in ("train_elbo", "val_elbo", "seconds", "lr"):
            if key in record:
                writer.add_scalar(f"epoch/{key}", record[key], epoch)
        for site, value in event.kl.items():
            writer.add_scalar(f"kl/{site}", value, epoch)
        if self.image_every and epoch % self.image_every == 0 and self._images_possible(event.model):
            samples, pairs = self._grids(event)
            writer.add_image("samples", samples, epoch)
            writer.add_image("reconstructions", pairs, epoch)
        writer.flush()

    def _images_possible(self, model) -> bool:
        return bool(getattr(self.data, "is_image", False)) and not getattr(model, "uses_labels", False)

    def _grids(self, event: EpochEnd):
        """Grids of samples and of validation images above their reconstructions (seeded, so
        training's random streams are untouched)."""
        from torchvision.utils import make_grid

        n = self.num_images
        nrow = max(1, int(n**0.5))
        x = event.val_x[: max(1, n // 2)]
        with seeded(self.seed), torch.no_grad(), poutine.block():
            drawn = sample(event.model, n, mean=True, seed=None)
            recon = _reconstruct(event.model, event.guide, x)
        samples = make_grid(drawn.detach().cpu().float().clamp(0, 1), nrow=nrow, padding=1, pad_value=0.5)
        pairs = torch.cat([x.cpu().float(), recon.cpu().float()]).clamp(0, 1)
        return samples, make_grid(pairs, nrow=x.shape[0], padding=1, pad_value=0.5)

    def on_fit_end(self, event) -> None:
        self.finish(error=event.error)  # nothing is logged after the fit: the files are closed now

    def finish(self, error: BaseException | None = None, saved: Path | None = None) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def _reconstruct(model, guide, x):
    """E[x | z] for one draw z ~ q(z|x) per point: the guide's draws replayed into the model."""
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    site = next(s for s in model_trace.nodes.values() if s["type"] == "sample" and s["is_observed"])
    try:
        mean = site["fn"].mean
    except NotImplementedError:
        mean = site["fn"].sample()
    return mean.reshape(x.shape)


def _after_existing_files(log_dir: Path) -> None:
    """Wait (at most a second) until a new event file's name sorts after those already in
    ``log_dir``: TensorBoard reads a folder's files in name order, which starts with the second
    they were created, and the purge marker only drops events read before it."""
    stamps = [int(p.name.split(".")[3]) for p in log_dir.glob("events.out.tfevents.*") if p.name.split(".")[3].isdigit()]
    deadline = time.monotonic() + 1.5  # a file stamped further ahead (another clock) is not waited for
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)

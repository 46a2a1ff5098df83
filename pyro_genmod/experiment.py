"""One experiment end to end: build a pair, fit it, score it on the test set, save the run."""

from __future__ import annotations

import math
from pathlib import Path

import pyro

from .checkpoint import Checkpointer
from .data import Dataset
from .distributed import is_main_process
from .errors import ConfigError, DataError, GenmodError, RunFolderError, TrainingDiverged
from .estimates import bits_per_dim
from .factories import create_guide, create_model, default_guide
from .importance import LogLikelihood, score
from .runs import check_trusted, resume_folder, run_dataset_options, save_run, take_run_folder
from .seeding import check_seed
from .tracking import RunInfo, check_logger_names, create_loggers
from .train import FitResult, check_positive_int, fit

__all__ = ["score", "run_experiment", "resume_experiment"]


def score_metrics(ll: LogLikelihood, proposal: str, image_shape: tuple[int, ...] | None = None) -> dict:
    """The test-set scores as stored in ``metrics.json``; for image data (``image_shape``, the
    shape of one image) also the IS estimate and the ELBO in bits per dimension."""
    summary = ll.summary()
    if image_shape is not None:
        dims = math.prod(image_shape)
        bits = {"test_bits_per_dim": bits_per_dim(summary["log_likelihood"], dims),
                "test_elbo_bits_per_dim": bits_per_dim(summary["elbo"], dims)}
    else:
        bits = {}
    return {
        **bits,
        "test_elbo": summary["elbo"],
        "test_log_likelihood": summary["log_likelihood"],
        "test_log_likelihood_stderr": summary["log_likelihood_stderr"],
        "num_importance_samples": summary["num_importance_samples"],
        "num_test_points": summary["num_points"],
        "khat_mean": summary["khat_mean"],
        "khat_max": summary["khat_max"],
        "khat_above_0.7": summary["khat_above_0.7"],
        "khat_nan": summary["khat_nan"],
        "proposal": proposal,
    }


def metrics_of(ll: LogLikelihood, proposal: str, result: FitResult, image_shape: tuple[int, ...] | None = None) -> dict:
    return {
        **score_metrics(ll, proposal, image_shape),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "stopped_reason": result.stopped_reason,
        "final_train_elbo": result.history[-1]["train_elbo"] if result.history else None,
        "final_val_elbo": result.history[-1]["val_elbo"] if result.history else None,
    }


def run_experiment(
    model_name: str,
    guide_name: str | None,
    data: Dataset,
    *,
    model_options: dict | None = None,
    guide_options: dict | None = None,
    num_samples: int = 1000,
    eval_seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
    loggers: list[str] | str | None = None,
    log_every: int = 50,
    **fit_options,
) -> tuple[dict, FitResult, Path | None]:
    """Build ``model_name`` with ``guide_name`` for ``data``, fit, score the test set, save.

    ``guide_name=None`` takes the model's default guide (``m2`` for ``m2``, else ``mean_field``).

    The output folder is checked before training, so a taken or unwritable ``out`` fails fast.
    With ``out``, a checkpoint is written there every epoch (and every ``checkpoint_every``
    steps); ``resume=True`` continues from it. ``loggers`` (``"tensorboard"``, ``"mlflow"``,
    ``"csv"``: :mod:`pyro_genmod.tracking`) record the fit into ``out`` as it trains (the loss,
    learning rate and gradient norm every ``log_every`` steps); they are named in the
    checkpoint, so a resumed run continues their series. If training diverges, the
    last good state is still scored and saved, then :class:`TrainingDiverged` is re-raised. Under
    ``distributed=True`` only rank 0 writes and scores; other ranks return empty metrics.
    """
    check_positive_int("the number of importance samples K", num_samples)
    loggers = check_logger_names(loggers)
    check_positive_int("log_every", log_every)
    if loggers and out is None:
        raise ConfigError(f"the loggers ({', '.join(loggers)}) write into the run folder: give out=<folder>")
    main = is_main_process()
    folder = None if out is None else Path(out)
    pyro.set_rng_seed(check_seed(fit_options.get("seed", 0)))  # parameter initialisation follows the seed
    guide_name = guide_name if guide_name is not None else default_guide(model_name)
    model = create_model(model_name, data, **(model_options or {}))
    guide = create_guide(guide_name, model, **(guide_options or {}))
    created = None  # the outermost folder this call creates, removed again if fit refuses its input
    taken = None  # the run folder, locked by this process until the run is saved (main process)
    if folder is not None and main:
        if not resume:
            created = next((p for p in reversed((folder, *folder.parents)) if not p.exists()), None)
        taken = take_run_folder(folder, overwrite=overwrite, resume=resume)
        folder = taken.work  # the folder itself, or its staging folder when replacing a run
    elif folder is not None and resume:
        folder = resume_folder(folder)
    try:
        return _fit_score_save(
            model, guide, data, folder, taken, created, main, resume, num_samples, eval_seed,
            model_name, guide_name, model_options, guide_options, checkpoint_every, (loggers, log_every), fit_options,
        )
    finally:
        if taken is not None:
            taken.release()


def _fit_score_save(model, guide, data, folder, taken, created, main, resume, num_samples, eval_seed,
                    model_name, guide_name, model_options, guide_options, checkpoint_every, tracking, fit_options):
    """The body of :func:`run_experiment` once its run folder is taken (``taken``: None off rank 0)."""
    loggers, log_every = tracking
    callbacks = list(fit_options.pop("callbacks", None) or [])
    if folder is not None:
        spec = {
            "model": {"name": model_name, "options": model_options or {}},
            "guide": {"name": guide_name, "options": guide_options or {}},
            "dataset": {"name": data.name, "options": data.options, "shape": list(data.shape)},
            "evaluation": {"num_samples": num_samples, "seed": eval_seed},
            "checkpoint_every": checkpoint_every,
            "fit": {k: v for k, v in fit_options.items() if k not in ("progress", "device", "distributed")},
        }
        if loggers:
            spec["loggers"], spec["log_every"] = loggers, log_every
        fit_options["checkpoint"] = Checkpointer(folder, every=checkpoint_every, spec=spec)
    tracked = []
    if loggers and main:
        home = taken.path if taken is not None else folder
        tags = {"dataset": data.name, "model": model_name, "guide": guide_name}
        run = RunInfo(folder, home.name, params=spec, tags=tags, store=home, every_n_steps=log_every)
        tracked = create_loggers(loggers, run)
        for logger in tracked:
            logger.hold_open = True  # finished below, once the run folder is saved
    finished = None  # (error, saved folder) for the loggers
    try:
        metrics, result, saved = _fit_score_save_tracked(
            model, guide, data, folder, taken, created, main, resume, num_samples, eval_seed, fit_options,
            [*callbacks, *tracked],
        )
        finished = (None, saved)
        return metrics, result, saved
    except TrainingDiverged as error:  # scored and saved all the same
        finished = (error, taken.path if taken is not None else folder)
        raise
    except BaseException as error:
        finished = (error, None)
        raise
    finally:
        for logger in tracked:
            logger.finish(*finished)


def _fit_score_save_tracked(model, guide, data, folder, taken, created, main, resume, num_samples, eval_seed,
                            fit_options, callbacks):
    diverged = None
    try:
        result = fit(model, guide, data, resume=resume, callbacks=callbacks, **fit_options)
    except TrainingDiverged as error:
        diverged, result = error, error.result
    except GenmodError:
        if taken is not None:
            taken.release()
        _remove_empty(folder, created)
        raise
    if not main:
        if diverged is not None:
            raise diverged
        return {}, result, None
    ll, proposal = score(model, guide, data.test, num_samples, seed=eval_seed)
    metrics = metrics_of(ll, proposal, result, data.shape if data.is_image else None)
    if folder is not None:
        config = {
            "training": result.options,
            "evaluation": {"num_samples": num_samples, "seed": eval_seed, "proposal": proposal},
        }
        save_run(folder, model=model, guide=guide, data=data, config=config, metrics=metrics, history=result.history)
        folder = taken.commit() if taken is not None else folder
    if diverged is not None:
        raise diverged
    return metrics, result, folder


def _remove_empty(folder: Path | None, created: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``created`` while they are empty."""
    if folder is None or created is None:
        return
    for path in (folder, *folder.parents):
        if not path.is_dir() or any(path.iterdir()):
            return
        path.rmdir()
        if path == created:
            return


def resume_experiment(
    out: str | Path, *, progress: bool = True, device: str | None = None, distributed: bool = False,
    trust_code: bool = False, allow_changed_data: bool = False,
) -> tuple[dict, FitResult, Path | None]:
    """Continue the interrupted run in ``out`` from its checkpoint, then score and save it.

    The model, guide, dataset and every training option come from the checkpoint, so the
    result is bit for bit the run that would have finished without the interruption (on the
    CPU, with the same thread count). A run of a user's Pyro program imports that code again:
    it is refused unless ``trust_code=True``. A data file whose content changed since the run
    started is refused unless ``allow_changed_data=True``.
    """
    from .data import load_dataset

    folder = Path(out)
    if not folder.is_dir():
        raise RunFolderError(f"run folder '{folder}' does not exist; nothing to resume")
    spec = Checkpointer(resume_folder(folder)).load().meta.get("spec") or {}
    check_trusted(folder, spec, trust_code)
    try:
        model, guide, dataset, evaluation = spec["model"], spec["guide"], spec["dataset"], spec["evaluation"]
        options = dict(
            model_options=model["options"], guide_options=guide["options"],
            num_samples=evaluation["num_samples"], eval_seed=evaluation["seed"],
            checkpoint_every=spec["checkpoint_every"], loggers=spec.get("loggers"),
            log_every=spec.get("log_every", 50), **spec["fit"],
        )
    except (KeyError, TypeError) as error:
        raise RunFolderError(
            f"the checkpoint in '{folder}' does not say how to rebuild its run (missing {error}); "
            f"resume it from Python with fit(..., checkpoint=folder, resume=True)"
        ) from None
    data = load_dataset(dataset["name"], **run_dataset_options(dataset["name"], dataset["options"], allow_changed_data))
    if list(data.shape) != dataset.get("shape", list(data.shape)):
        raise DataError(
            f"the run in '{folder}' was trained on points of shape {tuple(dataset['shape'])}, but "
            f"dataset '{dataset['name']}' now gives shape {data.shape}; restore the original data to resume"
        )
    return run_experiment(
        model["name"], guide["name"], data, out=folder, resume=True, progress=progress,
        device=device, distributed=distributed, **options,
    )

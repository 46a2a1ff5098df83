"""One experiment end to end: build a pair, fit it, score it on the test set, save the run."""

from __future__ import annotations

from pathlib import Path

import pyro

from ._registry import create_guide, create_model
from .data import Dataset
from .errors import TrainingDiverged
from .importance import LogLikelihood, log_likelihood
from .runs import prepare_run_folder, save_run
from .train import FitResult, check_positive_int, fit

__all__ = ["score", "run_experiment"]


def score(model, guide, x, num_samples: int, seed: int = 0) -> tuple[LogLikelihood, str]:
    """IS log-likelihood of ``x``; a point-estimate guide is replaced by the prior as proposal.

    Returns the estimate and the name of the proposal used.
    """
    proposal = guide
    if getattr(guide, "is_point_estimate", False):
        proposal = create_guide("prior", model)
    return log_likelihood(model, proposal, x, num_samples, seed=seed), proposal.registry_name


def metrics_of(ll: LogLikelihood, proposal: str, result: FitResult) -> dict:
    summary = ll.summary()
    return {
        "test_elbo": summary["elbo"],
        "test_log_likelihood": summary["log_likelihood"],
        "test_log_likelihood_stderr": summary["log_likelihood_stderr"],
        "num_importance_samples": summary["num_importance_samples"],
        "num_test_points": summary["num_points"],
        "khat_mean": summary["khat_mean"],
        "khat_max": summary["khat_max"],
        "khat_above_0.7": summary["khat_above_0.7"],
        "proposal": proposal,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "stopped_reason": result.stopped_reason,
        "final_train_elbo": result.history[-1]["train_elbo"] if result.history else None,
        "final_val_elbo": result.history[-1]["val_elbo"] if result.history else None,
    }


def run_experiment(
    model_name: str,
    guide_name: str,
    data: Dataset,
    *,
    model_options: dict | None = None,
    guide_options: dict | None = None,
    num_samples: int = 1000,
    eval_seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    **fit_options,
) -> tuple[dict, FitResult, Path | None]:
    """Build ``model_name`` with ``guide_name`` for ``data``, fit, score the test set, save.

    The output folder is checked before training, so a taken or unwritable ``out`` fails fast.
    If training diverges, the last good state is still scored and saved, then
    :class:`TrainingDiverged` is re-raised.
    """
    check_positive_int("the number of importance samples K", num_samples)
    folder = prepare_run_folder(out, overwrite) if out is not None else None
    pyro.set_rng_seed(fit_options.get("seed", 0))  # parameter initialisation follows the seed
    model = create_model(model_name, data, **(model_options or {}))
    guide = create_guide(guide_name, model, **(guide_options or {}))
    diverged = None
    try:
        result = fit(model, guide, data, **fit_options)
    except TrainingDiverged as error:
        diverged, result = error, error.result
    ll, proposal = score(model, guide, data.test, num_samples, seed=eval_seed)
    metrics = metrics_of(ll, proposal, result)
    if folder is not None:
        config = {
            "training": result.options,
            "evaluation": {"num_samples": num_samples, "seed": eval_seed, "proposal": proposal},
        }
        save_run(folder, model=model, guide=guide, data=data, config=config, metrics=metrics, history=result.history)
    if diverged is not None:
        raise diverged
    return metrics, result, folder

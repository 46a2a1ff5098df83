"""``mlflow``: parameters, metrics and the saved run folder in an MLflow run (MlflowClient)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..callbacks import EpochEnd, FitStart, StepEnd
from ..errors import ConfigError
from ..folders import MLFLOW_RUN_FILE as RUN_ID_FILE
from ..folders import RUN_FILES
from ..runs import atomic_write_text
from .base import Logger, RunInfo, flat_params, register_logger, require

__all__ = ["RUN_ID_FILE", "MLflowLogger"]


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


@register_logger("mlflow")
class MLflowLogger(Logger):
    """An MLflow run per fit, through ``mlflow.tracking.MlflowClient``.

    - params: the run's configuration (``params``, flattened to ``model.options.latent_dim``
      and so on) and the fit's options (``fit.lr``, ...);
    - metrics: ``step/loss``, ``step/lr``, ``step/grad_norm`` at the global step every
      ``every_n_steps`` steps; ``epoch/train_elbo``, ``epoch/val_elbo``, ``epoch/seconds``,
      ``epoch/lr`` and ``kl/<site>`` at the epoch number;
    - artifacts: the saved run folder's ``config.json``, ``metrics.json``, ``history.csv`` and
      ``params.safetensors`` under ``run/``, when the folder is written (see :meth:`finish`);
    - tags: ``tags`` (dataset, model, guide, objective, seed for runs and grid cells).

    The store is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a local file store
    ``mlruns/`` in ``store`` (by default ``folder``); MLflow 3 keeps its file store behind
    ``MLFLOW_ALLOW_FILE_STORE``, which is set for a local store unless already set. The run id is
    kept in ``folder/mlflow-run.json``: a resumed fit continues the same MLflow run and skips
    the steps and epochs that run already holds (a resumed fit repeats them exactly), and logs
    the checkpoint's epochs it lacks.
    """

    name = "mlflow"
    extra = "mlflow"
    module = "mlflow.tracking"

    def __init__(
        self, folder, *, tracking_uri: str | None = None, experiment: str = "genmod", run_name: str | None = None,
        params: dict | None = None, tags: dict | None = None, store=None, every_n_steps: int | None = 50,
    ):
        super().__init__(folder, every_n_steps=every_n_steps)
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(store or folder).resolve() / "mlruns").as_uri()
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.run_name = run_name or Path(folder).resolve().name
        self.params, self.tags = dict(params or {}), {k: str(v) for k, v in (tags or {}).items()}
        self.client, self.run_id = None, None
        self.last_step, self.last_epoch = 0, 0

    @classmethod
    def for_run(cls, run: RunInfo) -> MLflowLogger:
        return cls(run.folder, experiment=run.experiment, run_name=run.name, params=run.params, tags=run.tags,
                   store=run.store, every_n_steps=run.every_n_steps)

    # --- the run ------------------------------------------------------------------------------

    def _connect(self):
        tracking = require("mlflow.tracking", "mlflow", "mlflow")
        if _is_file_store(self.tracking_uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return tracking.MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # created meanwhile by another worker of the grid
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _recorded(self) -> dict | None:
        try:
            recorded = json.loads((self.folder / RUN_ID_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(recorded, dict) and recorded.get("tracking_uri") == self.tracking_uri:
            return recorded
        return None

    def _last(self, key: str) -> int:
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)

    def on_fit_start(self, event: FitStart) -> None:
        from mlflow.exceptions import MlflowException

        self.client = self._connect()
        recorded = self._recorded()
        try:
            if event.resumed and recorded is not None:
                self.run_id = recorded["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                self.last_step, self.last_epoch = self._last("step/loss"), self._last("epoch/val_elbo")
            else:
                if recorded is not None:  # an attempt that was killed before its first checkpoint
                    previous = self.client.get_run(recorded["run_id"])
                    if previous.info.status == "RUNNING":
                        self.client.set_terminated(recorded["run_id"], status="KILLED")
                tags = {
                    "objective": str(event.options.get("objective")), "seed": str(event.options.get("seed")),
                    **self.tags, "mlflow.runName": self.run_name, "genmod.folder": str(self.folder.resolve()),
                }
                run = self.client.create_run(self._experiment_id(), tags=tags, run_name=self.run_name)
                self.run_id, self.last_step, self.last_epoch = run.info.run_id, 0, 0
                atomic_write_text(self.folder / RUN_ID_FILE, json.dumps(
                    {"tracking_uri": self.tracking_uri, "experiment": self.experiment, "run_id": self.run_id}) + "\n")
            have = self.client.get_run(self.run_id).data.params
            params = flat_params({**self.params, "fit": {**self.params.get("fit", {}), **event.options}})
            self._log(params=[(k, v) for k, v in params.items() if k not in have])
        except MlflowException as error:
            raise ConfigError(f"MLflow store '{self.tracking_uri}': {' '.join(str(error).split())}") from None
        for record in event.history:  # the checkpoint's epochs this MLflow run does not have yet
            if record["epoch"] > self.last_epoch:
                self._log_epoch(record, {})

    def _log(self, metrics=(), params=(), step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in metrics]
        params = [Param(k, v) for k, v in params]
        for start in range(0, max(len(metrics), len(params)), 100):  # MLflow's batch limit is 100 params
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 100], params=params[start : start + 100])

    def on_step(self, event: StepEnd) -> None:
        if event.global_step > self.last_step:
            self._log([("step/loss", event.loss), ("step/lr", event.lr), ("step/grad_norm", event.grad_norm)],
                      step=event.global_step)

    def on_epoch_end(self, event: EpochEnd) -> None:
        if event.epoch > self.last_epoch:
            self._log_epoch(event.record, event.kl)

    def _log_epoch(self, record: dict, kl: dict) -> None:
        metrics = [(f"epoch/{k}", record[k]) for k in ("train_elbo", "val_elbo", "seconds", "lr") if k in record]
        metrics += [(f"kl/{site}", value) for site, value in kl.items()]
        self._log(metrics, step=record["epoch"])

    def finish(self, error: BaseException | None = None, saved: Path | None = None) -> None:
        if self.client is None or self.run_id is None:
            return
        if saved is not None:
            for name in RUN_FILES:
                if (Path(saved) / name).is_file():
                    self.client.log_artifact(self.run_id, str(Path(saved) / name), artifact_path="run")
        status = "FINISHED" if error is None else ("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        self.client.set_terminated(self.run_id, status=status)
        self.client, self.run_id = None, None

"""Callbacks in fit and the loggers built on them, read back with the real libraries: TensorBoard's
``EventAccumulator``, MLflow's ``MlflowClient`` on a file store, the CSV file.

A run interrupted after its loggers have written past its last checkpoint (a callback that
raises; in the slow test, SIGKILL from outside) and then resumed must leave every series with
each step exactly once, and the values those of the finished run's history.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pyro_genmod as pg
from pyro_genmod.bench import load_config, run_bench
from pyro_genmod.callbacks import Callback
from pyro_genmod.checkpoint import CHECKPOINT_FILE, load_checkpoint
from pyro_genmod.cli import main
from pyro_genmod.errors import CallbackError, ConfigError
from pyro_genmod.experiment import run_experiment
from pyro_genmod.tracking import CSVLogger, MLflowLogger, TensorBoardLogger

TINY = {"latent_dim": 2, "hidden": [16]}
FIT = {"batch_size": 256, "seed": 3, "progress": False}  # 1,297 digits: 6 steps per epoch
STEPS_PER_EPOCH = 6
CLI = ["--batch-size", "256", "--latent-dim", "2", "--model-opt", "hidden=[16]", "--guide-opt", "hidden=[16]",
       "-K", "10", "--seed", "3", "--quiet"]


@pytest.fixture(autouse=True)
def _mlflow_file_store(monkeypatch):
    """MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE (the logger sets it in the
    process that logs; the test's own MlflowClient reads with it too)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


class Raiser(Callback):
    """Raises at the end of epoch ``epoch``: the fit stops as a killed process would."""

    every_n_steps = None

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, event):
        if event.epoch == self.epoch:
            raise RuntimeError(f"stop at epoch {event.epoch}")


def _pair(digits):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, **TINY)
    return model, pg.create_guide("mean_field", model, hidden=[16])


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))  # purge_orphaned_data=True, TensorBoard's default
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _images(log_dir: Path) -> dict[str, list[int]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}


def _metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_interrupted_and_resumed_fit_logs_every_step_once(tmp_path, digits, monkeypatch):
    """TensorBoard, MLflow and CSV loggers on fit: a callback raising at the end of epoch 2 stops
    it with a CallbackError naming it, after the loggers logged epoch 2 but before its
    checkpoint; the checkpoint (end of epoch 1) is intact; the resumed fit's logs hold each
    step and epoch once, matching the history."""
    folder, store = tmp_path / "run", (tmp_path / "mlruns").as_uri()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # the logger sets it for a file store

    def loggers():
        return [
            TensorBoardLogger(folder, every_n_steps=4, image_every=2),
            MLflowLogger(folder, tracking_uri=store, experiment="tiny", params={"model": {"name": "vae"}},
                         tags={"model": "vae"}, every_n_steps=4),
            CSVLogger(folder),
        ]

    model, guide = _pair(digits)
    with pytest.raises(CallbackError) as caught:
        pg.fit(model, guide, digits, epochs=3, checkpoint=folder, callbacks=[*loggers(), Raiser(2)], **FIT)
    message = str(caught.value)
    assert "callback Raiser raised in on_epoch_end: RuntimeError: stop at epoch 2" in message and "\n" not in message
    assert caught.value.callback == "Raiser" and caught.value.hook == "on_epoch_end"
    progress = load_checkpoint(folder / CHECKPOINT_FILE).meta["progress"]
    assert (progress["epoch"], progress["step"], len(progress["history"])) == (2, 0, 1)
    assert [r["epoch"] for r in _csv_rows(folder / "history.csv")] == ["1", "2"]  # kept as training went
    before = _scalars(folder / "tensorboard" / "step")["step/loss"]
    assert [s for s, _ in before] == [4, 8, 12]  # logged past the checkpoint (step 6)

    model, guide = _pair(digits)
    result = pg.fit(model, guide, digits, epochs=3, checkpoint=folder, resume=True, callbacks=loggers(), **FIT)
    history = result.history
    assert [r["epoch"] for r in history] == [1, 2, 3]

    epochs = _scalars(folder / "tensorboard" / "epoch")
    assert {"epoch/train_elbo", "epoch/val_elbo", "epoch/seconds", "epoch/lr", "kl/z"} <= set(epochs)
    for key in ("train_elbo", "val_elbo"):
        assert [s for s, _ in epochs[f"epoch/{key}"]] == [1, 2, 3]
        assert [v for _, v in epochs[f"epoch/{key}"]] == pytest.approx([r[key] for r in history], rel=1e-6)
    assert all(v >= 0 for _, v in epochs["kl/z"])
    steps = _scalars(folder / "tensorboard" / "step")
    assert set(steps) == {"step/loss", "step/lr", "step/grad_norm"}
    for series in steps.values():
        assert [s for s, _ in series] == [4, 8, 12, 16]  # 18 steps in all, every 4th, none twice
    assert [v for _, v in steps["step/loss"][:3]] == [v for _, v in before]  # resumed bit for bit
    assert _images(folder / "tensorboard" / "epoch") == {"samples": [2], "reconstructions": [2]}

    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (run,) = client.search_runs([experiment.experiment_id])  # the resumed fit continued the same run
    assert run.info.status == "FINISHED"
    for key in ("epoch/train_elbo", "epoch/val_elbo", "epoch/seconds", "kl/z"):
        assert _metric_steps(client, run.info.run_id, key) == [1, 2, 3]
    for key in ("step/loss", "step/lr", "step/grad_norm"):
        assert _metric_steps(client, run.info.run_id, key) == [4, 8, 12, 16]
    val = sorted(client.get_metric_history(run.info.run_id, "epoch/val_elbo"), key=lambda m: m.step)
    assert [m.value for m in val] == pytest.approx([r["val_elbo"] for r in history], rel=1e-6)
    assert run.data.params["model.name"] == "vae" and run.data.params["fit.lr"] == "0.001"
    assert run.data.params["fit.epochs"] == "3" and run.data.tags["model"] == "vae"

    rows = _csv_rows(folder / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_elbo"]) for r in rows] == pytest.approx([r["val_elbo"] for r in history], rel=1e-12)


def test_callback_events_and_refusals(tmp_path, digits):
    """The hooks get what they promise; anything that is not a Callback is refused before training."""
    seen = []

    class Recorder(Callback):
        every_n_steps = 5

        def on_fit_start(self, event):
            seen.append(("start", event.global_step, event.steps_per_epoch, event.resumed))

        def on_step(self, event):
            seen.append(("step", event.global_step, event.epoch, event.step))
            assert math.isfinite(event.loss) and event.loss > 0 and event.grad_norm > 0 and event.lr == 1e-3

        def on_epoch_end(self, event):
            seen.append(("epoch", event.epoch, event.global_step))
            assert set(event.kl) == {"z"} and event.kl["z"] > 0

        def on_fit_end(self, event):
            seen.append(("end", event.error, event.final["epoch"]))

    model, guide = _pair(digits)
    pg.fit(model, guide, digits, epochs=2, callbacks=[Recorder()], **FIT)
    assert seen == [
        ("start", 0, STEPS_PER_EPOCH, False), ("step", 5, 1, 5), ("epoch", 1, 6), ("step", 10, 2, 4),
        ("epoch", 2, 12), ("end", None, 2),
    ]
    with pytest.raises(ConfigError, match="is not a pyro_genmod.callbacks.Callback"):
        pg.fit(model, guide, digits, epochs=1, callbacks=[print], **FIT)
    with pytest.raises(ConfigError, match="every_n_steps must be a positive integer"):
        bad = Recorder()
        bad.every_n_steps = 0
        pg.fit(model, guide, digits, epochs=1, callbacks=[bad], **FIT)


def test_cli_loggers_resume_the_same_series_and_save_the_run_as_artifacts(tmp_path, digits):
    """run_experiment with loggers stopped at epoch 2 by a callback, then ``genmod train --resume``
    (the loggers come from the checkpoint): one MLflow run, tagged, its metrics once per step,
    the saved run files as artifacts; TensorBoard's step series without repeats."""
    folder = tmp_path / "run"
    with pytest.raises(CallbackError, match="Raiser"):
        run_experiment(
            "vae", None, digits, model_options=TINY, guide_options={"hidden": [16]}, num_samples=10, out=folder,
            loggers="tensorboard,mlflow,csv", log_every=4, epochs=3, callbacks=[Raiser(2)], **FIT,
        )
    assert main(["train", "--resume", str(folder), "--quiet"]) == 0
    run = pg.load_run(folder)
    history = [int(r["epoch"]) for r in _csv_rows(folder / "history.csv")]
    assert history == [1, 2, 3] and run.metrics["epochs"] == 3

    client = MlflowClient(tracking_uri=(folder / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "genmod"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    tags = mlrun.data.tags
    assert (tags["dataset"], tags["model"], tags["guide"], tags["objective"], tags["seed"]) == (
        "digits", "vae", "mean_field", "trace_elbo", "3")
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert _metric_steps(client, mlrun.info.run_id, "epoch/val_elbo") == [1, 2, 3]
    assert _metric_steps(client, mlrun.info.run_id, "step/loss") == [4, 8, 12, 16]
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id, "run")}
    assert artifacts == {"run/config.json", "run/metrics.json", "run/history.csv", "run/params.safetensors"}
    assert mlrun.data.params["model.options.latent_dim"] == "2"

    assert [s for s, _ in _scalars(folder / "tensorboard" / "epoch")["epoch/val_elbo"]] == [1, 2, 3]
    assert [s for s, _ in _scalars(folder / "tensorboard" / "step")["step/loss"]] == [4, 8, 12, 16]

    # --overwrite replaces the run with its logs: the old TensorBoard files and MLflow link go with it
    assert main(["train", "--out", str(folder), "--overwrite", "--epochs", "1", "--logger", "tensorboard", *CLI]) == 0
    assert [s for s, _ in _scalars(folder / "tensorboard" / "epoch")["epoch/val_elbo"]] == [1]
    assert len(list((folder / "tensorboard" / "epoch").glob("events.out.tfevents.*"))) == 1
    assert not (folder / "mlflow-run.json").exists() and (folder / "mlruns").is_dir()


def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """Without tensorboard or mlflow installed (hidden here), each logger option names its extra."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    for name, extra in (("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("csv,mlflow", "mlflow")):
        assert main(["train", "--logger", name, "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f'pip install "pyro-genmod[{extra}]"' in err, err
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(ConfigError, match=r'pip install "pyro-genmod\[tensorboard\]"'):
        TensorBoardLogger(tmp_path)
    with pytest.raises(ConfigError, match=r'pip install "pyro-genmod\[mlflow\]"'):
        MLflowLogger(tmp_path)
    assert main(["train", "--logger", "wandb", "--out", str(tmp_path / "run")]) == 2
    assert "--logger: unknown logger 'wandb'; choose from: csv, mlflow, tensorboard" in capsys.readouterr().err


BENCH = """
name = "tracked"
results_dir = "{root}/results"
runs_dir = "{root}/runs"
logger = {logger}
[grid]
datasets = ["digits"]
models = ["vae"]
guides = ["mean_field"]
objectives = ["trace_elbo"]
seeds = [0, 1]
[training]
epochs = 1
batch_size = 512
[evaluation]
num_samples = 10
max_points = 50
khat_points = 10
eval_block = 50
probe_points = 100
kl_samples = 2
[models.vae]
latent_dim = 2
hidden = [16]
[guides.mean_field]
hidden = [16]
"""


@pytest.mark.filterwarnings("ignore::pyro_genmod.errors.KhatWarning")  # K=10 is too few for k-hat: not checked here
def test_bench_grid_is_one_mlflow_experiment_with_a_tagged_run_per_cell(tmp_path):
    config = tmp_path / "tracked.toml"
    config.write_text(BENCH.format(root=tmp_path.as_posix(), logger='["mlflow", "csv"]'))
    rows = run_bench(config, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "tracked"]
    runs = client.search_runs([experiment.experiment_id])
    tags = sorted((r.data.tags["dataset"], r.data.tags["model"], r.data.tags["guide"], r.data.tags["objective"],
                   r.data.tags["seed"], r.info.run_name, r.info.status) for r in runs)
    assert tags == [
        ("digits", "vae", "mean_field", "trace_elbo", "0", "digits/vae/mean_field/trace_elbo-k1/seed0", "FINISHED"),
        ("digits", "vae", "mean_field", "trace_elbo", "1", "digits/vae/mean_field/trace_elbo-k1/seed1", "FINISHED"),
    ]
    for run in runs:
        assert _metric_steps(client, run.info.run_id, "epoch/val_elbo") == [1]
        assert {a.path for a in client.list_artifacts(run.info.run_id, "run")} >= {"run/metrics.json", "run/history.csv"}

    config.write_text(BENCH.format(root=tmp_path.as_posix(), logger='"tensorboard,comet"'))
    with pytest.raises(ConfigError, match="tracked.toml': unknown logger 'comet'; choose from"):
        load_config(config)


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_its_logs_without_repeats(tmp_path):
    """``genmod train --logger tensorboard,mlflow,csv`` SIGKILLed from outside after its first
    checkpoints, then ``--resume``: each logged step once in TensorBoard and MLflow, and the CSV
    history equal to the saved run's."""
    folder = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_ALLOW_FILE_STORE")  # the logger sets it in the run's process
    command = [sys.executable, "-m", "pyro_genmod", "train", "--epochs", "12", "--checkpoint-every", "5",
               "--logger", "tensorboard,mlflow,csv", "--log-every", "5", "--out", str(folder), *CLI]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path, inodes = folder / CHECKPOINT_FILE, set()
    while len(inodes) < 4 and process.poll() is None:
        if path.exists():
            inodes.add(path.stat().st_ino)
        time.sleep(0.002)
    time.sleep(0.3)  # let it log past the checkpoint
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (folder / "params.safetensors").exists()
    done = subprocess.run([sys.executable, "-m", "pyro_genmod", "train", "--resume", str(folder), "--quiet"],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = _csv_rows(folder / "history.csv")
    assert [int(r["epoch"]) for r in saved] == list(range(1, 13))
    epochs = _scalars(folder / "tensorboard" / "epoch")
    assert [s for s, _ in epochs["epoch/val_elbo"]] == list(range(1, 13))
    assert [v for _, v in epochs["epoch/val_elbo"]] == pytest.approx([float(r["val_elbo"]) for r in saved], rel=1e-6)
    steps = _scalars(folder / "tensorboard" / "step")
    assert [s for s, _ in steps["step/loss"]] == list(range(5, 73, 5))  # 72 steps
    client = MlflowClient(tracking_uri=(folder / "mlruns").as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert _metric_steps(client, run.info.run_id, "epoch/val_elbo") == list(range(1, 13))
    assert _metric_steps(client, run.info.run_id, "step/loss") == list(range(5, 73, 5))
    assert json.loads((folder / "mlflow-run.json").read_text())["run_id"] == run.info.run_id


@pytest.mark.slow
def test_under_torchrun_only_rank_0_logs(tmp_path):
    """Two gloo processes with ``--logger tensorboard,mlflow,csv``: one event file per series,
    one MLflow run, each step once (rank 1 runs no callbacks)."""
    folder = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_ALLOW_FILE_STORE")  # the logger sets it in the run's process
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyro_genmod"]
    args = ["train", "--distributed", "--epochs", "2", "--logger", "tensorboard,mlflow,csv", "--log-every", "2",
            "--out", str(folder), *CLI]  # a global batch of 512: 3 steps per epoch
    done = subprocess.run(torchrun + args, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for axis in ("step", "epoch"):
        assert len(list((folder / "tensorboard" / axis).glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in _scalars(folder / "tensorboard" / "step")["step/loss"]] == [2, 4, 6]
    assert [s for s, _ in _scalars(folder / "tensorboard" / "epoch")["epoch/val_elbo"]] == [1, 2]
    client = MlflowClient(tracking_uri=(folder / "mlruns").as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert _metric_steps(client, run.info.run_id, "step/loss") == [2, 4, 6]
    assert [int(r["epoch"]) for r in _csv_rows(folder / "history.csv")] == [1, 2]

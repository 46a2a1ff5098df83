"""Kill training with SIGKILL at several moments, resume, and get the uninterrupted run bit for bit.

A driver process imports pyro-genmod once, then forks one child per ``genmod train`` call
(so the test pays the import once). Each child installs a trap that sends SIGKILL to itself
at a chosen moment: between two steps, halfway through writing a checkpoint, after a
checkpoint is fully written but before it replaces the old one, halfway through writing
``metrics.json``; one more is killed from outside at an arbitrary moment. Each killed run is
resumed with ``genmod train --resume``, and the last resume finishes. The final parameters,
history and metrics must equal those of an uninterrupted run with the same seed, bitwise.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pyro_genmod as pg
from pyro_genmod.checkpoint import CHECKPOINT_FILE, Checkpointer, load_checkpoint

HERE = Path(__file__).resolve()
ARGS = [
    "train", "--epochs", "4", "--batch-size", "256", "--latent-dim", "2", "--seed", "5",
    "--model-opt", "hidden=[16]", "--guide-opt", "hidden=[16]", "-K", "20",
    "--checkpoint-every", "4", "--early-stopping", "3", "--quiet",
]  # 1,297 training points: 6 steps per epoch, 24 steps; checkpoints every 4 steps and epoch


# --- the driver (runs in its own process: python tests/test_resume.py JOBS.json) ---------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_trap(kind: str, n: int) -> None:
    """Arrange for this process to SIGKILL itself at the n-th occurrence of ``kind``."""
    from pyro_genmod import checkpoint, runs

    count = [0]

    def hit() -> bool:
        count[0] += 1
        return count[0] == n

    if kind == "step":  # between optimizer steps (any optimizer), after the last checkpoint
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        def dying_step(optimizer, args, kwargs):
            if hit():
                _die()

        register_optimizer_step_pre_hook(dying_step)
    elif kind in ("checkpoint_half", "checkpoint_before_replace"):
        write = checkpoint._write_bytes

        def dying_write(path, payload):
            if hit():
                cut = len(payload) // 2 if kind == "checkpoint_half" else len(payload)
                with open(path, "wb") as handle:
                    handle.write(payload[:cut])
                    handle.flush()
                _die()
            write(path, payload)

        checkpoint._write_bytes = dying_write
    elif kind == "metrics_half":  # while save_run writes metrics.json at the very end
        write_text = runs.atomic_write_text

        def dying_write_text(path, text):
            if Path(path).name == "metrics.json" and hit():
                runs._atomic_write(Path(path), lambda tmp: (Path(tmp).write_text(text[: len(text) // 2]), _die()))
            write_text(path, text)

        runs.atomic_write_text = dying_write_text
    elif kind != "none" and kind != "external":
        raise ValueError(kind)


def _external_kill(pid: int, folder: Path) -> int | None:
    """SIGKILL ``pid`` from outside a few ms after it has replaced the checkpoint twice.

    Returns the wait status if the process ended first, else ``None``."""
    path = folder / CHECKPOINT_FILE

    def inode() -> int | None:
        try:
            return path.stat().st_ino
        except FileNotFoundError:
            return None

    last, changes, deadline = inode(), 0, time.monotonic() + 120
    while changes < 2 and time.monotonic() < deadline:
        now = inode()
        if now is not None and now != last:
            last, changes = now, changes + 1
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return status
        time.sleep(0.0005)
    time.sleep(0.003)
    os.kill(pid, signal.SIGKILL)
    return None


def driver(jobs_file: str) -> None:
    import sklearn.datasets  # noqa: F401  (import once here, not in every forked child)

    import pyro_genmod.arviz_bridge  # noqa: F401
    import pyro_genmod.experiment  # noqa: F401
    from pyro_genmod.cli import main

    pg.list_models(), pg.list_guides(), pg.list_datasets()
    torch.set_num_threads(1)
    jobs = json.loads(Path(jobs_file).read_text())
    results = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the training process
            code = 1
            try:
                sys.stdout = sys.stderr = open(os.devnull, "w")
                _install_trap(job["kill"], job.get("n", 0))
                code = main(job["argv"])
            finally:
                os._exit(code)
        status = _external_kill(pid, Path(job["folder"])) if job["kill"] == "external" else None
        if status is None:
            _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        results.append({"killed": killed, "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})
        results[-1]["checkpoint_ok"] = _checkpoint_ok(Path(job["folder"]))
    print(json.dumps(results))


def _checkpoint_ok(folder: Path) -> bool | None:
    path = folder / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        load_checkpoint(path)
        return True
    except pg.RunFolderError:
        return False


if __name__ == "__main__" and len(sys.argv) == 2:
    driver(sys.argv[1])
    sys.exit(0)


# --- the tests ------------------------------------------------------------------------------


def _run_jobs(tmp_path: Path, jobs: list[dict]) -> list[dict]:
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(HERE), str(jobs_file)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _history(folder: Path) -> list[dict]:
    with open(folder / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


RECIPE = [  # a non-default optimizer, Burda's schedule (the lr drops after epochs 1 and 4), clipping, init
    "--optimizer", "adamw", "--optimizer-opt", "eps=1e-4", "--optimizer-opt", "weight_decay=0.01",
    "--lr-schedule", "burda", "--clip-grad-norm", "5", "--init", "burda",
]


@pytest.mark.parametrize("recipe", [[], RECIPE], ids=["adam", "adamw_burda_clip"])
def test_sigkill_at_many_moments_then_resume_is_bitwise_identical(tmp_path, recipe):
    ref, run = tmp_path / "reference", tmp_path / "interrupted"
    resume = ["train", "--resume", str(run), "--quiet"]
    jobs = [
        {"argv": ARGS + recipe + ["--out", str(ref)], "kill": "none", "folder": str(ref)},
        {"argv": ARGS + recipe + ["--out", str(run)], "kill": "step", "n": 11, "folder": str(run)},  # epoch 2, step 5
        {"argv": resume, "kill": "checkpoint_half", "n": 2, "folder": str(run)},
        {"argv": resume, "kill": "checkpoint_before_replace", "n": 1, "folder": str(run)},
        {"argv": resume, "kill": "external", "folder": str(run)},
        {"argv": resume, "kill": "metrics_half", "n": 1, "folder": str(run)},
        {"argv": resume, "kill": "none", "folder": str(run)},
    ]
    results = _run_jobs(tmp_path, jobs)
    assert [r["killed"] for r in results] == [False, True, True, True, True, True, False], results
    assert results[0]["code"] == 0 and results[-1]["code"] == 0
    # no kill ever left a checkpoint that cannot be loaded
    assert all(r["checkpoint_ok"] for r in results), results

    expected, got = load_file(str(ref / "params.safetensors")), load_file(str(run / "params.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after kill/resume"
    assert _history(ref) == _history(run)
    if recipe:  # the schedule really ran: epoch 1 at lr, epochs 2-4 at lr * 10^(-1/7)
        assert [float(row["lr"]) for row in _history(run)] == pytest.approx([1e-3] + [1e-3 * 10 ** (-1 / 7)] * 3)
    metrics = [json.loads((f / "metrics.json").read_text()) for f in (ref, run)]
    for m in metrics:
        m.pop("train_seconds")
    assert metrics[0] == metrics[1]
    # interrupted writes leave only their temporary files, never a torn run file
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in ref.iterdir()
    )


def test_resume_refuses_changed_options_and_missing_checkpoint(tmp_path, digits):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=2, hidden=[8])
    guide = pg.create_guide("mean_field", model, hidden=[8])
    with pytest.raises(pg.RunFolderError, match="no checkpoint to resume from"):
        pg.fit(model, guide, digits, epochs=1, checkpoint=tmp_path, resume=True, progress=False)
    pg.fit(model, guide, digits, epochs=1, batch_size=512, checkpoint=tmp_path, progress=False)
    with pytest.raises(pg.ConfigError, match="batch_size=512"):
        pg.fit(model, guide, digits, epochs=2, batch_size=256, checkpoint=tmp_path, resume=True, progress=False)


def test_nan_loss_stops_and_leaves_the_last_checkpoint_loadable(tmp_path, digits, monkeypatch):
    from pyro_genmod import train

    make = train.get_objective

    def nan_on_step_8(name, num_particles=1):
        objective, calls = make(name, num_particles), [0]

        def loss(model, guide, x):
            calls[0] += 1
            differentiable, value = objective(model, guide, x)
            return (differentiable * float("nan"), float("nan")) if calls[0] == 8 else (differentiable, value)

        return loss

    monkeypatch.setattr(train, "get_objective", nan_on_step_8)
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=2, hidden=[8])
    guide = pg.create_guide("mean_field", model, hidden=[8])
    saver = Checkpointer(tmp_path, every=3)
    with pytest.raises(pg.TrainingDiverged, match="loss became nan at epoch 2, step 2"):
        pg.fit(model, guide, digits, epochs=3, batch_size=256, checkpoint=saver, progress=False)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    # 6 steps per epoch: the last checkpoint is the end of epoch 1 (step 6), written before step 8
    assert (ckpt.meta["progress"]["epoch"], ckpt.meta["progress"]["step"]) == (2, 0)
    assert all(torch.isfinite(t).all() for k, t in ckpt.tensors.items() if t.is_floating_point())
    # and the model was restored to that same last good state
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt.tensors[f"model.{name}"])

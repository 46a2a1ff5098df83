"""The genmod command line: a tiny real run, re-scoring, sampling, listing, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_genmod as pg
from pyro_genmod import _registry
from pyro_genmod.cli import main

TINY = ["--epochs", "2", "--num-samples", "50", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY, "--latent-dim", "3", "--out", str(out)]) == 0
    return out


def test_train_writes_a_complete_run_folder(tiny_run, capsys):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "history.csv", "metrics.json", "params.safetensors"} <= names
    assert not [n for n in names if n.startswith(".")], "no temporary files are left behind"
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("test_elbo", "test_log_likelihood", "test_log_likelihood_stderr",
                "num_importance_samples", "khat_mean", "khat_max", "epochs", "train_seconds"):
        assert key in metrics, key
    assert metrics["num_importance_samples"] == 50 and metrics["epochs"] == 2
    assert metrics["test_log_likelihood"] >= metrics["test_elbo"]
    history = (tiny_run / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_elbo,val_elbo,seconds,lr" and len(history) == 3
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["model"] == {"name": "vae", "options": {"latent_dim": 3}}
    assert config["guide"]["name"] == "mean_field" and config["dataset"]["name"] == "digits"


def test_evaluate_reproduces_the_saved_metrics(tiny_run, capsys):
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert main(["evaluate", str(tiny_run), "--num-samples", "50", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_log_likelihood"] == pytest.approx(saved["test_log_likelihood"], abs=1e-5)
    assert again["test_elbo"] == pytest.approx(saved["test_elbo"], abs=1e-5)
    assert again["khat_mean"] == pytest.approx(saved["khat_mean"], abs=1e-6)


def test_load_run_restores_parameters(tiny_run):
    run = pg.load_run(tiny_run)
    ll = pg.log_likelihood(run.model, run.guide, run.data.test, 50, seed=0)
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert ll.mean == pytest.approx(saved["test_log_likelihood"], abs=1e-5)


def test_sample_writes_an_image_grid(tiny_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(tiny_run), "-n", "16", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(out).size == (4 * 9 + 1, 4 * 9 + 1)  # 4x4 tiles of 8 px, 1 px padding
    before = out.read_bytes()
    assert main(["sample", str(tiny_run), "-n", "4", "--out", str(out)]) == 2
    assert out.read_bytes() == before, "an existing file is never overwritten"


def test_list_shows_models_guides_datasets_and_pairs(capsys):
    assert main(["list", "--pairs"]) == 0
    out = capsys.readouterr().out
    for name in ("vae", "mean_field", "full_rank", "delta", "prior", "digits", "trace_elbo"):
        assert name in out
    assert "which guides fit each model" in out
    assert "--model path/to/file.py:ATTR" in out and "--trust-code" in out  # how to bring a Pyro program
    pairs_section = out.split("which guides fit each model:")[1]
    vae_row = next(line for line in pairs_section.splitlines() if line.strip().startswith("vae "))
    assert "mean_field" in vae_row and "full_rank" in vae_row


def _one_line_error(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert pattern in err, err


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["train", "--model", "nope"], "unknown model 'nope'"),
        (["train", "--guide", "nope"], "unknown guide 'nope'"),
        (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["train", "--objective", "nope", *TINY], "unknown objective 'nope'"),
        (["train", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["train", "--batch-size", "-5"], "--batch-size: expected a positive integer"),
        (["train", "--num-samples", "0"], "--num-samples/-K: expected a positive integer"),
        (["train", "--lr", "abc"], "--lr: expected a positive number"),
        (["train", "--latent-dim", "0"], "--latent-dim: expected a positive integer"),
        (["train", "--likelihood", "poisson", *TINY], "unknown likelihood 'poisson'"),
        (["evaluate", "/nonexistent/run"], "run folder '/nonexistent/run' does not exist"),
        (["evaluate", "x", "-K", "0"], "expected a positive integer"),
        (["sample", "/nonexistent/run"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, pattern):
    _one_line_error(capsys, argv, pattern)


def test_guide_that_does_not_fit_is_refused_before_training(capsys, monkeypatch, tmp_path):
    from test_core import DiscreteLatentModel

    monkeypatch.setitem(_registry._MODELS, "discrete_test", DiscreteLatentModel)
    out = tmp_path / "run"
    _one_line_error(capsys, ["train", "--model", "discrete_test", "--out", str(out)],
                    "guide 'mean_field' does not fit model 'discrete_test': latent site 'y' discrete")
    assert not out.exists() or not any(out.iterdir()), "nothing was written"


def test_incomplete_run_folder_is_refused(capsys, tiny_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_run / "config.json").read_text())
    _one_line_error(capsys, ["evaluate", str(broken)], "incomplete: missing metrics.json, history.csv, params.safetensors")
    for name in ("metrics.json", "history.csv"):
        (broken / name).write_text((tiny_run / name).read_text())
    (broken / "params.safetensors").write_bytes(b"not a safetensors file")
    _one_line_error(capsys, ["evaluate", str(broken)], "not a readable safetensors file")
    config = json.loads((tiny_run / "config.json").read_text())
    config["format_version"] = 999
    (broken / "config.json").write_text(json.dumps(config))
    _one_line_error(capsys, ["evaluate", str(broken)], "format version 999")


def test_existing_run_is_never_overwritten_without_flag(capsys, tiny_run, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir()}
    _one_line_error(capsys, ["train", *TINY, "--out", str(tiny_run)], "is not empty")
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir()} == before
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "old.txt").write_text("keep")
    assert main(["train", *TINY, "--out", str(copy), "--overwrite"]) == 0
    assert (copy / "metrics.json").exists() and (copy / "old.txt").read_text() == "keep"


def test_module_entry_point_runs_in_a_subprocess(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pyro_genmod", "train", "--epochs", "0"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr

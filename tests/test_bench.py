"""The benchmark grid runner: a tiny digits grid end to end, resuming, failed cells, metrics."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_genmod as pg
import pyro_genmod.bench as bench
from pyro_genmod.bench import executor, metrics
from pyro_genmod.bench import active_units, kl_per_dimension, linear_probe_accuracy, load_config, run_bench
from pyro_genmod.cli import main

CONFIG = """
name = "tiny"
title = "tiny digits grid"
results_dir = "{root}/results"
runs_dir = "{root}/runs/tiny"
[grid]
datasets = ["digits"]
models = {models}
guides = ["mean_field"]
objectives = ["trace_elbo", "iwae:3"]
seeds = [0]
[training]
epochs = 1
batch_size = 512
[evaluation]
num_samples = 30
max_points = 100
khat_points = 50
eval_block = 25
probe_points = 300
kl_samples = 4
[models.vae]
latent_dim = 3
hidden = [16]
[guides.mean_field]
hidden = [16]
[[overrides]]
match = {{ objective = "iwae:3" }}
training = {{ epochs = 2 }}
[[published]]
dataset = "digits"
model = "vae"
objective = "iwae"
k = 3
nll = 12.34
budget = "test value"
source = "a made-up entry for this test"
"""


def write_config(tmp_path, models='["vae"]'):
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG.format(root=tmp_path.as_posix(), models=models))
    return path


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_grid_end_to_end_on_digits(tmp_path):
    rows = run_bench(write_config(tmp_path), progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    saved = read_csv(tmp_path / "results" / "tiny.csv")
    assert [r["cell"] for r in saved] == [
        "digits/vae/mean_field/trace_elbo-k1/seed0",
        "digits/vae/mean_field/iwae-k3/seed0",
    ]
    for row in saved:
        assert set(bench.COLUMNS) == set(row)
        nll, elbo = float(row["test_nll"]), float(row["test_elbo"])
        assert 0 < nll <= -elbo + 1e-4  # the IS bound is never looser than the ELBO on the same draws
        assert math.isclose(float(row["test_bits_per_dim"]), nll / (64 * math.log(2)), rel_tol=1e-6)  # 8x8 images
        assert row["eval_K"] == "30" and row["eval_points"] == "100" and row["khat_points"] == "50"
        assert 0 <= float(row["khat_above_0.7"]) <= 1 and math.isfinite(float(row["khat_mean"]))
        assert 0 <= int(row["active_units"]) <= int(row["latent_dims"]) == 3
        assert float(row["kl_per_dim"]) >= 0 and 0 <= float(row["probe_accuracy"]) <= 1
    assert [r["epochs"] for r in saved] == ["1", "2"]  # the override reached only the iwae cell
    assert saved[1]["published_nll"] == "12.34" and saved[0]["published_nll"] == ""
    markdown = (tmp_path / "results" / "tiny.md").read_text()
    assert markdown.startswith("# tiny digits grid")
    assert "| IS NLL | s.e. | IS bits/dim |" in markdown and "| published NLL | published budget |" in markdown
    assert "| 12.34 | test value | ok |" in markdown and "a made-up entry for this test" in markdown
    # provenance under the table: this checkout's code and this machine, for both rows
    from pyro_genmod.bench.provenance import code_version, machine

    assert {r["code"] for r in saved} == {code_version()} and code_version().startswith("pyro-genmod ")
    assert f"Made with {code_version()} on {machine()} (2 rows)." in markdown


def test_finished_cells_are_skipped_and_trained_cells_only_rescored(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    first = run_bench(config, progress=False)

    def no_cell(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    with monkeypatch.context() as patch:
        patch.setattr(executor, "run_cell", no_cell)
        resumed = run_bench(config, progress=False)
        assert resumed == first
        (tmp_path / "results" / "tiny.csv").unlink()  # the table is rebuilt from the cells' result files
        assert run_bench(config, progress=False) == first
    # Results lost but run folders kept: cells are scored again without training.
    results = sorted((tmp_path / "runs" / "tiny").glob("*/result.json"))
    assert len(results) == 2
    for result in results:
        result.unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("a trained cell was trained again")

    monkeypatch.setattr(executor, "fit", no_training)
    again = run_bench(config, progress=False)
    assert [r["status"] for r in again] == ["ok", "ok"]
    for old, new in zip(first, again):
        assert new["epochs"] == old["epochs"]
        assert math.isclose(float(new["test_nll"]), float(old["test_nll"]), rel_tol=1e-6)  # same seed and draws


def test_a_failed_cell_is_recorded_and_the_grid_carries_on(tmp_path, capsys):
    config = write_config(tmp_path, models='["no_such_model", "vae"]')
    assert main(["bench", str(config), "--quiet"]) == 1
    out = capsys.readouterr()
    assert "2 cells ok, 2 failed" in out.out
    rows = read_csv(tmp_path / "results" / "tiny.csv")
    status = {r["cell"].split("/")[1]: r["status"] for r in rows}
    assert [r["status"] for r in rows if "no_such_model" in r["cell"]] == ["failed", "failed"]
    assert status["vae"] == "ok"
    assert all("unknown model 'no_such_model'" in r["error"] for r in rows if r["status"] == "failed")
    assert "failed: UnknownNameError" in (tmp_path / "results" / "tiny.md").read_text()
    # Failed cells stay recorded on resume, and run again only when asked.
    assert main(["bench", str(config), "--quiet"]) == 1
    assert len(read_csv(tmp_path / "results" / "tiny.csv")) == 4


@pytest.mark.parametrize(
    "text, match",
    [
        ("name = 'x'\ncolour = 1\n[grid]\n", "unknown keys"),
        ("name = 'x'\n[grid]\ndatasets = ['digits']\n", "models"),
        ("name = 'a b'\n", "name"),
        ("name = 'x'\n[grid]\ndatasets=['digits']\nmodels=['vae']\nguides=['mean_field']\nobjectives=['iwae:0']\n", "NAME:k"),
        ("name = 'x'\n[evaluation]\nK = 5\n[grid]\ndatasets=['digits']\nmodels=['vae']\nguides=['mean_field']\nobjectives=['iwae']\n", "no option 'K'"),
        ("name = [", "not valid TOML"),
    ],
)
def test_config_errors(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(pg.ConfigError, match=match):
        load_config(path)


def test_cli_missing_config_is_one_line(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read benchmark config" in capsys.readouterr().err


def test_shipped_configs_parse():
    for name, file in (("digits_smoke", "digits_smoke"), ("mnist_full", "mnist"), ("mnist_1k", "mnist_1k")):
        config = load_config(f"benchmarks/configs/{file}.toml")
        assert config.name == name and config.cells()


def test_active_units_counts_dimensions_with_varying_means():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 0.5, 0.05, 0.0])  # variances 1, 0.25, 0.0025, 0 against 0.01
    means = torch.randn(5000, 4, generator=generator) * scales
    assert active_units(means) == 2


def test_kl_per_dimension_matches_the_closed_form():
    data = pg.load_dataset("digits")
    model = pg.create_model("vae", data, latent_dim=4, hidden=[8])
    guide = pg.create_guide("mean_field", model, hidden=[8])
    x = data.test[:20]
    with torch.no_grad():
        q = guide.posterior(x)["z"]
    prior = torch.distributions.Normal(torch.zeros(4), 1.0)
    exact = float(torch.distributions.kl_divergence(q.base_dist, prior).mean())
    estimate = kl_per_dimension(model, guide, x, num_samples=4000)
    # Untrained encoder: q ~ N(m, s^2) with |m| small and s ~ 0.7, so the log-ratio per dimension
    # has variance ~ 2 ((s^2 - 1) / 2)^2 ~ 0.14; over 20 x 4000 draws and 4 dimensions the
    # estimate's s.e. is ~ sqrt(0.14 / 320000) ~ 7e-4. 0.01 is over 10 standard errors.
    assert estimate == pytest.approx(exact, abs=0.01)


def test_linear_probe_accuracy():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    features = torch.randn(400, 3, generator=generator) + 4.0 * labels[:, None]
    assert linear_probe_accuracy(features[:200], labels[:200], features[200:], labels[200:]) == 1.0
    shuffled = labels[torch.randperm(400, generator=generator)]
    # Labels independent of the features: accuracy ~ Binomial(200, 0.5) / 200, s.d. 0.035.
    assert abs(linear_probe_accuracy(features[:200], shuffled[:200], features[200:], shuffled[200:]) - 0.5) < 0.15


def test_processes_sharing_a_grid_merge_their_rows(tmp_path):
    config = write_config(tmp_path)
    assert [r["cell"] for r in run_bench(config, progress=False, only="/iwae-")] == ["digits/vae/mean_field/iwae-k3/seed0"]
    assert main(["bench", str(config), "--quiet", "--only", "/trace_elbo-"]) == 0
    rows = read_csv(tmp_path / "results" / "tiny.csv")
    assert [r["objective"] for r in rows] == ["trace_elbo", "iwae"]  # grid order, both kept


def test_blockwise_evaluation_resumes_from_saved_blocks(tmp_path, monkeypatch):
    data = pg.load_dataset("digits")
    model = pg.create_model("vae", data, latent_dim=2, hidden=[8])
    guide = pg.create_guide("mean_field", model, hidden=[8])
    x = data.test[:100]
    options = dict(seed=3, block=40, khat_points=40, folder=tmp_path / "eval")
    first, _ = bench.blockwise_log_likelihood(model, guide, x, 30, **options)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "points-000000-000040.npz", "points-000040-000080.npz", "points-000080-000100.npz"
    ]
    assert np.isfinite(first.khat[:40]).all() and np.isnan(first.khat[40:]).all()
    # Block i uses seed + i, so a block scored on its own matches the saved one.
    alone = pg.log_likelihood(model, guide, x[40:80], 30, seed=4, khat=False)
    assert torch.allclose(alone.per_point, first.per_point[40:80])
    (tmp_path / "eval" / "points-000080-000100.npz").unlink()
    calls = []
    real = metrics.log_likelihood
    monkeypatch.setattr(metrics, "log_likelihood", lambda *a, **k: calls.append(a[2].shape[0]) or real(*a, **k))
    again, _ = bench.blockwise_log_likelihood(model, guide, x, 30, **options)
    assert calls == [20]  # only the missing block was scored again
    assert torch.equal(again.per_point, first.per_point)


def test_a_table_from_other_run_folders_is_never_taken_as_this_grids_results(tmp_path):
    """A results CSV made elsewhere (a committed table, an earlier runs_dir) beside a new runs
    folder: every cell trains in the new folder, and the table holds the new numbers only."""
    config = write_config(tmp_path)
    first = run_bench(config, progress=False)
    table = (tmp_path / "results" / "tiny.csv").read_text()
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(config.read_text().replace("runs/tiny", "runs/other").replace("epochs = 1", "epochs = 3"))
    (tmp_path / "results" / "tiny.csv").write_text(table)  # the old table is there when the new grid starts
    second = run_bench(elsewhere, progress=False)
    cells = sorted((tmp_path / "runs" / "other").glob("digits__*"))
    assert len(cells) == 2 and all((cell / "params.safetensors").is_file() for cell in cells)  # trained here
    assert [r["epochs"] for r in first] == ["1", "2"] and [r["epochs"] for r in second] == ["3", "2"]
    assert second[0]["test_nll"] != first[0]["test_nll"]  # the trace_elbo cell's own 3 epochs, not the old row


def test_runs_dir_on_the_command_line_replaces_the_configs(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["bench", str(config), "--quiet", "--only", "trace_elbo", "--runs-dir", str(tmp_path / "mine")]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").glob("digits__*")) == ["digits__vae__mean_field__trace_elbo-k1__seed0"]
    assert not (tmp_path / "runs" / "tiny").exists()
    assert "1 cells ok" in capsys.readouterr().out
    assert main(["bench", str(config), "--collect", "--runs-dir", str(tmp_path / "mine")]) == 0
    assert "1 without a result" in capsys.readouterr().out
    assert [r["cell"] for r in read_csv(tmp_path / "results" / "tiny.csv")] == ["digits/vae/mean_field/trace_elbo-k1/seed0"]


# --- an edited config never reports the runs of other settings ---------------------------------


def _results(tmp_path):
    return {p: p.read_bytes() for p in sorted((tmp_path / "runs" / "tiny").glob("*/result*.json"))}


@pytest.mark.parametrize("edit, named", [
    (("epochs = 1", "epochs = 3"), "training epochs was 1, the config now says 3"),
    (("latent_dim = 3", "latent_dim = 4"), "model latent_dim was 3, the config now says 4"),
    (("[guides.mean_field]\nhidden = [16]", "[guides.mean_field]\nhidden = [8]"), "guide hidden was [16]"),
    (("batch_size = 512", "batch_size = 512\nbeta = 2.0"), "training beta was 1.0, the config now says 2.0"),
    (('training = {{ epochs = 2 }}', 'training = {{ epochs = 5 }}'), "training epochs was 2, the config now says 5"),
])
def test_a_changed_training_setting_is_refused_and_nothing_is_touched(tmp_path, capsys, edit, named):
    config = write_config(tmp_path)
    run_bench(config, progress=False)
    before, table = _results(tmp_path), (tmp_path / "results" / "tiny.csv").read_bytes()
    config.write_text(config.read_text().replace(*(part.replace("{{", "{").replace("}}", "}") for part in edit)))
    with pytest.raises(pg.ConfigError, match="was trained with other settings") as error:
        run_bench(config, progress=False)
    assert named in str(error.value) and "--runs-dir" in str(error.value)
    assert _results(tmp_path) == before and (tmp_path / "results" / "tiny.csv").read_bytes() == table
    assert main(["bench", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err and "Traceback" not in err
    assert _results(tmp_path) == before


def test_settings_written_out_at_their_defaults_are_the_same_settings(tmp_path):
    config = write_config(tmp_path)
    first = run_bench(config, progress=False)
    text = config.read_text().replace("batch_size = 512", "batch_size = 512\nlr = 0.001\nkl_warmup = 0")
    config.write_text(text.replace("hidden = [16]\n[guides", 'hidden = [16]\nlikelihood = "bernoulli"\n[guides'))
    assert run_bench(config, progress=False) == first  # nothing changed: skipped, same rows


def test_changed_evaluation_settings_rescore_the_trained_runs_and_keep_the_old_results(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    first = run_bench(config, progress=False)
    before = _results(tmp_path)
    params = {p: p.read_bytes() for p in (tmp_path / "runs" / "tiny").glob("*/params.safetensors")}

    def no_training(*args, **kwargs):
        raise AssertionError("a trained cell was trained again")

    monkeypatch.setattr(executor, "fit", no_training)
    config.write_text(config.read_text().replace("num_samples = 30", "num_samples = 60"))
    again = run_bench(config, progress=False)
    assert [r["eval_K"] for r in first] == ["30", "30"] and [r["eval_K"] for r in again] == ["60", "60"]
    assert [r["epochs"] for r in again] == [r["epochs"] for r in first]
    kept = {p.parent: b for p, b in _results(tmp_path).items() if p.name != "result.json"}
    assert sorted(kept.values()) == sorted(before.values())  # the first results, byte for byte, beside the new
    assert {p: p.read_bytes() for p in params} == params
    assert run_bench(config, progress=False) == again  # now they match: skipped


def test_a_result_written_before_settings_were_recorded_is_compared_on_its_columns(tmp_path):
    import json

    config = write_config(tmp_path)
    run_bench(config, progress=False)
    for path in (tmp_path / "runs" / "tiny").glob("*/result.json"):
        row = json.loads(path.read_text())
        del row["evaluation"]  # as results of earlier versions are
        path.write_text(json.dumps(row))
    legacy = _results(tmp_path)
    run_bench(config, progress=False)
    assert _results(tmp_path) == legacy  # IS K and methods match: kept
    config.write_text(config.read_text().replace("kl_samples = 4", 'kl_samples = 4\nmethods = ["is", "ais"]\n'
                                                 "ais_steps = 3\nais_chains = 2\nais_leapfrog = 1\nais_points = 5"))
    rows = run_bench(config, progress=False)
    assert [r["ais_points"] for r in rows] == ["5", "5"] and all(float(r["ais_nll"]) > 0 for r in rows)
    assert len(_results(tmp_path)) == 4  # the legacy results kept beside the new ones


def test_rows_that_predate_provenance_are_counted_as_unrecorded(tmp_path):
    import json

    config = write_config(tmp_path)
    run_bench(config, progress=False)
    first = sorted((tmp_path / "runs" / "tiny").glob("*/result.json"))[0]
    row = json.loads(first.read_text())
    del row["code"], row["machine"]  # as results of earlier versions are
    first.write_text(json.dumps(row))
    run_bench(config, progress=False)  # collects; nothing is scored again
    markdown = (tmp_path / "results" / "tiny.md").read_text()
    assert "(1 row); not recorded for 1 row made before rows named it." in markdown


def test_git_commit_names_the_checkout_the_package_runs_from(tmp_path, monkeypatch):
    """One git lookup for every results file: the checkout's short commit, ``+modified`` in the code
    version when the package's files differ, and ``GENMOD_COMMIT`` (or nothing) outside a checkout."""
    import shutil
    import subprocess

    from pyro_genmod.bench import provenance

    if shutil.which("git") is None:
        pytest.fail("git is needed to test the commit lookup")

    def fresh(package):
        monkeypatch.setattr(provenance, "_PACKAGE", package)
        provenance.git_commit.cache_clear()
        provenance.code_version.cache_clear()

    outside = tmp_path / "installed"
    outside.mkdir()
    fresh(outside)
    monkeypatch.delenv("GENMOD_COMMIT", raising=False)
    assert provenance.git_commit() is None and "@" not in provenance.code_version()
    assert provenance.commit_label() == "unknown"
    monkeypatch.setenv("GENMOD_COMMIT", "abc1234")
    fresh(outside)
    assert provenance.git_commit() == "abc1234"
    monkeypatch.delenv("GENMOD_COMMIT")

    repo = tmp_path / "checkout"
    package = repo / "pkg"
    package.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    fresh(package)
    assert provenance.git_commit() == provenance.commit_label() == head.stdout.strip()
    assert provenance.code_version().endswith(f"@{head.stdout.strip()}")
    (package / "code.py").write_text("x = 2\n")
    fresh(package)
    assert provenance.code_version().endswith(f"@{head.stdout.strip()}+modified")
    fresh(provenance.Path(provenance.__file__).resolve().parents[1])  # leave the cache as the package's own


def test_output_options_make_their_folder_or_give_one_usage_error(tmp_path, capsys):
    """pyro_genmod.bench.args: the benchmark scripts' --results-dir / --out types."""
    import argparse

    from pyro_genmod.bench.args import output_file, results_folder

    parser = argparse.ArgumentParser(prog="script")
    parser.add_argument("--results-dir", type=results_folder)
    parser.add_argument("--out", type=output_file)
    args = parser.parse_args(["--results-dir", str(tmp_path / "a" / "b"), "--out", str(tmp_path / "c" / "t.md")])
    assert args.results_dir == tmp_path / "a" / "b" and args.results_dir.is_dir()
    assert args.out == tmp_path / "c" / "t.md" and args.out.parent.is_dir() and not args.out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    for argv, message in (
        (["--results-dir", str(blocker)], f"argument --results-dir: '{blocker}' is a file, not a folder"),
        (["--out", str(blocker / "t.md")], f"argument --out: '{blocker}' is a file, not a folder"),
        (["--results-dir", str(blocker / "sub")], f"argument --results-dir: cannot create the folder '{blocker / 'sub'}'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert blocker.read_text() == "keep"


def test_cpu_model_and_machine_name_this_machine():
    from pyro_genmod.bench import provenance

    model = provenance.cpu_model()
    assert model and "\n" not in model
    if Path("/proc/cpuinfo").is_file():  # Linux: the model name line, as the kernel gives it
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        assert model == (names[0] if names else model)
    assert f"{os.cpu_count()} cores" in provenance.machine() and torch.__version__ in provenance.machine()


def test_evaluation_blocks_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A block's file appears only complete (fsynced, renamed into place); a failed write leaves no file
    and no temporary behind, and the block is scored again on the next call."""
    from pyro_genmod import folders
    from pyro_genmod.errors import RunFolderError

    data = pg.load_dataset("digits")
    model = pg.create_model("vae", data, latent_dim=2, hidden=[8])
    guide = pg.create_guide("mean_field", model, hidden=[8])
    x = data.test[:6]
    real = folders._fsync_file
    monkeypatch.setattr(folders, "_fsync_file", lambda path: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(RunFolderError, match="cannot write evaluation block .*No space left on device"):
        metrics.blockwise_log_likelihood(model, guide, x, 10, seed=0, block=3, khat_points=0, folder=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a block nor a temporary file
    monkeypatch.setattr(folders, "_fsync_file", real)
    first, _ = metrics.blockwise_log_likelihood(model, guide, x, 10, seed=0, block=3, khat_points=0, folder=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points-000000-000003.npz", "points-000003-000006.npz"]
    written = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again, _ = metrics.blockwise_log_likelihood(model, guide, x, 10, seed=0, block=3, khat_points=0, folder=tmp_path)
    assert torch.equal(first.per_point, again.per_point)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == written  # read back, not rewritten

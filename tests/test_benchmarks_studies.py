"""Smoke runs of the study scripts in benchmarks/ (gaps, m2_labels, guides, ae_vs_vae, reference_models,
toy2d_density, vq_proposals, ais): each real CLI entry with its smallest options on the embedded digits
set (or the small tabular sets), writing under tmp_path. Each test checks what the script wrote and that
the committed benchmarks/results/ is left exactly as it was; a folder that cannot be created for the
output is one argparse error line and exit code 2."""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ sits beside tests/

from benchmarks import ae_vs_vae, ais, gaps, guides, m2_labels, reference_models, toy2d_density, vq_proposals
from pyro_genmod.bench import run_bench
from pyro_genmod.cli import main as genmod

RESULTS = ROOT / "benchmarks" / "results"
PNG = b"\x89PNG\r\n\x1a\n"


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (ignored ones too) with its size and modification time."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            stat = (Path(parent) / name).stat()
            files[os.path.relpath(Path(parent) / name, folder)] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(autouse=True)
def committed_results_untouched():
    """No test here may write into benchmarks/results/ (nor leave torch's thread count changed)."""
    before, threads = _snapshot(RESULTS), torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    assert _snapshot(RESULTS) == before


def table(text: str, header_start: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[start + 1].replace("|", "")) == {"-"}
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert all(len(row) == lines[start].count("|") - 1 for row in rows)
    return rows


def number(cell: str) -> float:
    """The leading number of a cell such as ``-31.90 ± 1.11``; it must be finite."""
    value = float(cell.split()[0])
    assert math.isfinite(value), cell
    return value


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- gaps.py: about 3 s each --------------------------------------------------------------------------


def test_gaps_on_digits_writes_its_table_under_results_dir(tmp_path):
    out = tmp_path / "new" / "gaps"
    gaps.main(["--guides", "mean_field", "iaf", "--epochs", "1", "--points", "3", "-K", "10", "--steps", "2",
               "--latent-dim", "2", "--results-dir", str(out)])
    assert files_in(out) == ["gaps.md"]
    text = (out / "gaps.md").read_text(encoding="utf-8")
    assert text.startswith("# Inference gaps by guide family (digits)")
    rows = table(text, "| guide | log p(x) | ELBO amortized | ELBO local | inference gap | approximation gap |")
    assert [row[0] for row in rows] == ["mean_field", "iaf"]
    for row in rows:
        log_px, amortized, local, total, approximation, amortization = (number(c) for c in row[1:7])
        assert total == pytest.approx(log_px - amortized, abs=2e-3)
        assert total == pytest.approx(approximation + amortization, abs=2e-3)
        assert amortization == pytest.approx(local - amortized, abs=2e-3)


def test_gaps_on_ppca_checks_against_the_exact_log_likelihood(tmp_path):
    gaps.main(["--model", "ppca", "--guides", "exact_posterior", "mean_field", "--epochs", "1", "--points", "5",
               "-K", "10", "--steps", "2", "--latent-dim", "2", "--results-dir", str(tmp_path)])
    assert files_in(tmp_path) == ["gaps_ppca.md"]
    rows = table((tmp_path / "gaps_ppca.md").read_text(encoding="utf-8"), "| guide | log p(x) | exact log p(x) |")
    assert [row[0] for row in rows] == ["exact_posterior", "mean_field"]
    log_px, exact, *_, exact_gap = (number(c) for c in rows[0][1:8])
    assert log_px == pytest.approx(exact, abs=2e-3)  # IS from the exact posterior is exact
    assert exact_gap == pytest.approx(0.0, abs=2e-3)
    assert number(rows[1][7]) > 0.0  # the mean-field family misses the correlated PPCA posterior


# --- m2_labels.py: about 4 s --------------------------------------------------------------------------


def test_m2_labels_writes_one_row_per_label_count(tmp_path):
    m2_labels.main(["--epochs", "1", "--seeds", "0", "--latent-dim", "2", "--hidden", "16",
                    "--results-dir", str(tmp_path)])
    assert files_in(tmp_path) == ["m2_labels.md"]
    text = (tmp_path / "m2_labels.md").read_text()
    assert text.startswith("# M2 accuracy against labels on digits")
    rows = table(text, "| labels | MNIST equivalent | M2 test accuracy, mean |")
    assert [int(row[0]) for row in rows] == m2_labels.proportional_labels(1297) == [10, 20, 30, 80]
    assert [int(row[1]) for row in rows] == list(m2_labels.MNIST_LABELS)
    for row in rows:
        assert 0.0 <= number(row[2]) <= 1.0 and 0.0 <= number(row[5]) <= 1.0
        assert float(row[7]) == m2_labels.TUTORIAL[int(row[1])]
        assert row[3] == "n/a (one seed)"  # no spread from a single seed


# --- guides.py: about 5 s -----------------------------------------------------------------------------


def test_guides_writes_the_named_file_under_results_dir(tmp_path):
    guides.main(["--only", "mean_field", "--max-k", "1", "--epochs", "1", "--test-points", "8", "-K", "100",
                 "--local-steps", "2", "--repeats", "3", "--latent-dim", "2", "--results-dir", str(tmp_path),
                 "--out", "guides_small.md"])
    assert files_in(tmp_path) == ["guides_small.md"]
    text = (tmp_path / "guides_small.md").read_text()
    rows = table(text, "| guide | objective | IS log p(x) (K=100) | ELBO | gap |")
    assert [row[:2] for row in rows] == [
        ["mean_field", "trace_elbo"], ["mean_field", "tracemeanfield_elbo"],
        ["prior", "(mean_field's model)"], ["local", "(mean_field start, 2 steps)"],
    ]
    for row in rows:
        log_px, elbo, gap = number(row[2]), number(row[3]), number(row[4])
        assert gap == pytest.approx(log_px - elbo, abs=0.016) and gap >= 0.0  # IS is never below the ELBO
    assert "3 draws, batch of 8 test points)" in text  # the batch the variance used: --test-points 8
    variance = table(text, "| K | IWAE total variance | DReG total variance |")
    assert [row[0] for row in variance] == ["5", "50"]
    for row in variance:
        assert number(row[1]) > 0 and number(row[2]) > 0


# --- ae_vs_vae.py: about 6 s --------------------------------------------------------------------------


def test_ae_vs_vae_writes_table_and_figure_beside_the_out_stem(tmp_path):
    ae_vs_vae.main(["--epochs", "1", "--latent-dims", "2", "--hidden", "16", "--samples", "20", "--pairs", "3",
                    "--steps", "2", "--score-points", "5", "--out", str(tmp_path / "new" / "ae.v2")])
    assert files_in(tmp_path / "new") == ["ae.v2.md", "ae.v2.png"]  # a dot in the stem is kept
    assert (tmp_path / "new" / "ae.v2.png").read_bytes().startswith(PNG)
    text = (tmp_path / "new" / "ae.v2.md").read_text()
    assert "Figure: `ae.v2.png`." in text
    rows = table(text, "| model | latent dim | random codes from | completeness (conf > 0.9) |")
    assert [row[:3] for row in rows] == [
        ["ae", "2", "N(0, I)"], ["ae", "2", "Gaussian fitted to codes"],
        ["vae", "2", "N(0, I)"], ["vae", "2", "Gaussian fitted to codes"],
    ]
    for row in rows:
        complete, near, step, ends, evenness, path_ratio = (number(c) for c in row[3:9])
        assert 0 <= complete <= 1 and 0 <= near <= 1 and step >= 0 and ends >= 0
        assert evenness >= 1 and path_ratio >= 1  # the triangle inequality, per pixel
        number(row[9])
    assert [row[10] for row in rows[:2]] == ["n/a (improper prior)"] * 2
    assert number(rows[2][10]) < 0


# --- reference_models.py: its smallest run (--quick) trains all 29 rows -------------------------------


@pytest.mark.slow  # 34 s here (2 shared cores): --quick still trains every problem and guide
def test_reference_models_quick_writes_csv_and_table_beside_the_out_stem(tmp_path):
    reference_models.main(["--quick", "--num-samples", "100", "--out", str(tmp_path / "new" / "ref")])
    assert files_in(tmp_path / "new") == ["ref.csv", "ref.md"]
    with open(tmp_path / "new" / "ref.csv", newline="") as handle:
        saved = list(csv.DictReader(handle))
    assert len(saved) == 29
    assert {"model", "dataset", "guide", "proposal", "exact_ll", "is_ll", "reference_ll"} <= set(saved[0])
    for row in saved:
        for key in ("exact_ll", "is_ll", "is_stderr", "elbo", "reference_ll", "svi_minus_reference_per_dim"):
            assert math.isfinite(float(row[key])), (key, row)
        if row["proposal"] == "exact_posterior":  # IS from the exact posterior is exact
            assert abs(float(row["is_minus_exact"])) < 1e-3
    rows = table((tmp_path / "new" / "ref.md").read_text(), "| model | dataset | guide (proposal) | exact LL |")
    assert len(rows) == len(saved)
    assert [number(row[3]) for row in rows] == pytest.approx([float(r["exact_ll"]) for r in saved], abs=1e-3)


# --- toy2d_density.py: about 8 s ----------------------------------------------------------------------


def test_toy2d_density_writes_one_figure_per_dataset(tmp_path, capsys):
    import matplotlib.pyplot as plt

    toy2d_density.main(["--epochs", "1", "--num-train", "200", "-K", "4", "--out", str(tmp_path / "figures")])
    plt.close("all")
    names = [f"toy2d_{name}_vae.png" for name in toy2d_density.DATASETS]
    assert files_in(tmp_path / "figures") == sorted(names)
    for name in names:
        assert (tmp_path / "figures" / name).read_bytes().startswith(PNG)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(toy2d_density.DATASETS)
    for line in lines:
        assert math.isfinite(float(re.search(r"test log p\(x\) (\S+)", line).group(1)))


# --- vq_proposals.py: about 6 s, with the tiny vq_vae run it scores -----------------------------------


def test_vq_proposals_scores_every_weight_and_temperature_of_a_trained_run(tmp_path, capsys):
    run = tmp_path / "vq_run"
    assert genmod(["train", "--model", "vq_vae", "--guide", "vq", "--epochs", "1", "--batch-size", "512",
                   "--model-opt", "num_positions=4", "--model-opt", "num_codes=4", "--model-opt", "code_dim=2",
                   "--model-opt", "hidden=[8]", "--guide-opt", "hidden=[8]", "-K", "4", "--quiet",
                   "--out", str(run)]) == 0
    before = _snapshot(run)
    capsys.readouterr()
    vq_proposals.main([str(run), "--points", "5", "-K", "100", "--weights", "0", "0.5", "--temperatures", "1", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{run}: val images 0-4, K = 100, seed 0"
    assert [line.split(":")[0] for line in lines[1:]] == ["T=1 w=0", "T=1 w=0.5", "T=2 w=0", "T=2 w=0.5"]
    for line in lines[1:]:
        nll, elbo = re.search(r"IS NLL (\S+) ± \S+, ELBO (\S+),", line).groups()
        assert 0 < float(nll) <= -float(elbo) + 0.011  # the IS bound is never looser than the ELBO
    assert _snapshot(run) == before  # it prints; it writes nothing


# --- ais.py: about 6 s with the tiny bench whose cell it scores ---------------------------------------

BENCH = """
name = "tiny_ais"
results_dir = "{root}/bench_results"
runs_dir = "{root}/runs"
[grid]
datasets = ["digits"]
models = ["vae"]
guides = ["mean_field"]
objectives = ["trace_elbo"]
seeds = [0]
[training]
epochs = 1
batch_size = 512
[evaluation]
num_samples = 30
max_points = 8
khat_points = 0
probe_points = 100
kl_samples = 2
[models.vae]
latent_dim = 2
hidden = [8]
[guides.mean_field]
hidden = [8]
"""


def test_ais_runs_a_bench_cell_and_reports_it_under_out(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(BENCH.format(root=tmp_path.as_posix()))
    assert [row["status"] for row in run_bench(config, progress=False)] == ["ok"]
    cell_name = "digits__vae__mean_field__trace_elbo-k1__seed0"
    cell = tmp_path / "runs" / cell_name
    settings = ["--points", "4", "--steps", "5", "--chains", "2", "--leapfrog", "1", "--block", "2",
                "--bdmc-points", "3"]
    assert ais.main(["run", "--runs", str(tmp_path / "runs"), "--cell", cell_name, *settings]) == 0
    assert files_in(cell / "eval-ais-T5-K2-L1-eps0.05-seed0-block2") == [
        "points-000000-000002.npz", "points-000002-000004.npz"]
    assert files_in(cell / "eval-K5000-seed0-block500") == ["points-000000-000004.npz"]
    assert not [p.name for p in cell.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    with np.load(cell / "bdmc-T5-K2-L1-n3-seed0.npz") as saved:
        assert saved["lower"].shape == saved["upper"].shape == (3,)
        assert np.isfinite(saved["lower"]).all() and np.isfinite(saved["upper"]).all()

    out = tmp_path / "pages" / "ais.md"
    capsys.readouterr()
    assert ais.main(["report", "--runs", str(tmp_path / "runs"), *settings, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert files_in(out.parent) == ["ais.md"]
    text = out.read_text()
    rows = table(text, "| model | objective | k | test images | IS NLL | AIS NLL | IS misses (all) |")
    assert len(rows) == 1 and rows[0][:4] == ["vae", "trace_elbo", "1", "4"]
    is_nll, ais_nll, missed = (number(c) for c in rows[0][4:7])
    assert missed == pytest.approx(is_nll - ais_nll, abs=0.016)  # three numbers rounded to 0.01
    bdmc = table(text, "| model | objective | k | simulated points |")
    assert len(bdmc) == 1 and bdmc[0][3] == "3"
    forward, reverse = number(bdmc[0][4]), number(bdmc[0][5])
    assert number(bdmc[0][6]) == pytest.approx(forward - reverse, abs=0.016)


# --- an output folder that cannot be created: one argparse error, exit code 2, before any work --------


def _cases(blocker: Path) -> dict[str, tuple]:
    """Each script with an output option naming a folder that cannot be created (``blocker`` is a file)."""
    inside = str(blocker / "out")
    return {
        "gaps": (gaps.main, ["--results-dir", str(blocker)]),
        "m2_labels": (m2_labels.main, ["--results-dir", str(blocker)]),
        "guides": (guides.main, ["--results-dir", str(blocker)]),
        "ae_vs_vae": (ae_vs_vae.main, ["--out", inside]),
        "reference_models": (reference_models.main, ["--out", inside]),
        "toy2d_density": (toy2d_density.main, ["--out", str(blocker)]),
        "ais": (ais.main, ["report", "--runs", str(blocker.parent), "--out", str(blocker / "ais.md")]),
    }


@pytest.mark.parametrize("script", ["gaps", "m2_labels", "guides", "ae_vs_vae", "reference_models",
                                    "toy2d_density", "ais"])
def test_an_output_folder_that_is_a_file_is_one_error_line(tmp_path, capsys, script):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me\n")
    main, argv = _cases(blocker)[script]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"\S+: error: argument --(results-dir|out): '" + re.escape(str(blocker))
                        + "' is a file, not a folder; name a folder for the results", last), last
    assert files_in(tmp_path) == ["a_file"] and blocker.read_text() == "keep me\n"


def test_vq_proposals_refuses_a_missing_run_folder_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vq_proposals.main([str(tmp_path / "no_run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("does not exist")


def test_ais_refuses_a_missing_runs_folder_in_one_line(tmp_path, capsys):
    for action in ("run", "report"):
        with pytest.raises(SystemExit) as exit_info:
            ais.main([action, "--runs", str(tmp_path / "no_runs"), "--cell", "c", "--out", str(tmp_path / "ais.md")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].endswith(
            f"--runs '{tmp_path / 'no_runs'}' is not a folder; give the bench's runs folder (cell folders inside)")

"""Smoke tests of the benchmark scripts perf.py, distributed.py, diffusion.py and samplers.py: each
CLI run with its smallest options on digits, writing under ``--results-dir tmp_path``; what it writes
is checked, and the committed ``benchmarks/results/`` must be left exactly as it was."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ sits beside tests/

from benchmarks import diffusion, distributed, perf, samplers

COMMITTED = ROOT / "benchmarks" / "results"


def _snapshot() -> tuple[str, dict]:
    """``git status`` of benchmarks/results and every file's (mtime, size) under it."""
    status = subprocess.run(["git", "status", "--porcelain", "--", str(COMMITTED)], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    files = {str(p.relative_to(COMMITTED)): (p.stat().st_mtime_ns, p.stat().st_size)
             for p in sorted(COMMITTED.rglob("*")) if p.is_file()}
    return status, files


@pytest.fixture
def committed_untouched():
    """Fails the test if it wrote, rewrote or added anything under benchmarks/results/."""
    before = _snapshot()
    yield
    after = _snapshot()
    assert after[0] == before[0], "git status of benchmarks/results changed"
    changed = {name for name in before[1].keys() | after[1].keys() if before[1].get(name) != after[1].get(name)}
    assert not changed, f"benchmarks/results/ was written: {sorted(changed)}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clock_ok(entry: dict) -> None:
    for clock in ("wall", "cpu"):
        assert _finite(entry[clock]["median_s"]) and entry[clock]["median_s"] > 0
        assert _finite(entry[clock]["ratio"]) and entry[clock]["ratio"] > 0


# ---------------------------------------------------------------- perf.py


def test_perf_svi_scorer_ais_and_report(tmp_path, monkeypatch, committed_untouched):
    """perf.py's svi, scorer and ais sections with the fewest rounds, then report (step, threads,
    scaling, protocol and e2e are not run: compiling, training runs or MNIST)."""
    monkeypatch.setattr(perf, "MNIST_ROOT", str(tmp_path / "no-mnist"))  # synthetic images, never ../shared
    out = tmp_path / "results"
    assert perf.main(["svi", "--rounds", "1", "--block", "1", "--quick", "--results-dir", str(out)]) == 0
    assert perf.main(["scorer", "--points", "4", "--k", "100", "--rounds", "2", "--importance-points", "1",
                      "--results-dir", str(out)]) == 0
    assert not (out / "perf.md").exists()  # only report and ais write perf.md
    assert perf.main(["ais", "--points", "2", "--chains", "2", "--steps", "3", "--leapfrog", "1", "--rounds", "2",
                      "--results-dir", str(out)]) == 0
    assert "## 5. AIS throughput" in (out / "perf.md").read_text()  # ais adds its own section

    svi = json.loads((out / "perf" / "svi.json").read_text())
    assert {"machine", "setup", "adam", "results"} <= svi.keys()
    assert set(svi["results"]) == {"default", "fused", "foreach"}
    for variants in svi["results"].values():
        assert set(variants) == {"hand", "zoo", "zoo_pyro", "svi"}  # --quick leaves out svi_jit
        for entry in variants.values():
            _clock_ok(entry)
        assert variants["hand"]["wall"]["ratio"] == 1.0 and variants["hand"]["loss_rel_diff_to_zoo"] <= 1e-5

    scorer = json.loads((out / "perf" / "scorer.json").read_text())
    assert {"machine", "setup", "results", "importance", "zoo_over_importance"} <= scorer.keys()
    assert "4 points x K=100" in scorer["setup"]
    for entry in scorer["results"].values():
        _clock_ok(entry)
        assert _finite(entry["throughput"]) and entry["throughput"] > 0
    assert _finite(scorer["zoo_over_importance"])

    ais = json.loads((out / "perf" / "ais.json").read_text())
    for name in ("hand", "zoo"):
        _clock_ok(ais["results"][name])
        assert _finite(ais["results"][name]["throughput"])

    assert perf.main(["report", "--results-dir", str(out)]) == 0
    text = (out / "perf.md").read_text()
    assert text.startswith("# Performance")
    assert "| target | measured | verdict |" in text
    assert "| Adam | variant | ms/step (wall) | ratio to hand (wall) | ratio to hand (CPU) |" in text
    assert "| scorer | points x samples / s (wall medians)" in text
    assert "## 5. AIS throughput" in text
    assert sorted(p.name for p in (out / "perf").iterdir()) == ["ais.json", "scorer.json", "svi.json"]


# ---------------------------------------------------------------- distributed.py


def test_distributed_ddp_part(tmp_path, committed_untouched):
    """The DDP part: a real torchrun launch of 2 gloo workers, tiny VAE, 2 rounds of 1 step per
    variant: 13-20 s under pytest, 24 s as a fresh process, on the loaded 2-core machine, so not
    marked slow. The grid part is not run (4 runs of an 8-cell `genmod bench`: minutes)."""
    out = tmp_path / "results"
    distributed.main(["--part", "ddp", "--rounds", "2", "--block", "1", "--hidden", "8", "--latent-dim", "2",
                      "--batch-size", "8", "--results-dir", str(out)])
    result = json.loads((out / "scale.json").read_text())
    assert set(result) == {"ddp"}  # a new folder has no grid numbers to keep
    ddp = result["ddp"]
    assert ddp["world_size"] == 2 and ddp["per_rank_batch"] == 8 and ddp["parameters"] > 0
    assert set(ddp["variants"]) == {"hand-written", "ddp", "ddp + find_unused_parameters",
                                    "ddp + buffers broadcast every step", "ddp + gradient_as_bucket_view"}
    for entry in ddp["variants"].values():
        _clock_ok(entry)
    assert all(_finite(d) and d == 0.0 for d in ddp["replica_max_abs_difference"].values())  # replicas in step
    assert ddp["machine"]["command"].endswith(f"--results-dir {out}")
    text = (out / "scale.md").read_text()
    assert "| variant | steps / s (wall) |" in text and "| ddp + gradient_as_bucket_view |" in text
    assert "## The digits grid" not in text


# ---------------------------------------------------------------- diffusion.py


def test_diffusion_run_and_report(tmp_path, committed_untouched):
    """``run`` (0.2 CPU-seconds of training per model, T=2, K=100 on 8 points) then ``report``."""
    runs, out = tmp_path / "runs", tmp_path / "results"
    diffusion.main(["run", "--runs", str(runs), "--results-dir", str(out), "--budget", "0.2", "--num-steps", "2",
                    "-K", "100", "--score-points", "8", "--chunk", "1", "--val-points", "8"])
    assert sorted(p.name for p in out.iterdir()) == ["diffusion_digits_samples.png", "diffusion_digits_vae_samples.png"]
    for png in out.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((runs / "digits" / "result.json").read_text())
    assert set(result["rows"]) == {"diffusion", "vae"}
    for row in result["rows"].values():
        assert row["points"] == 8 and row["num_samples"] == 100 and row["epochs"] >= 1
        for key in ("nll", "nll_stderr", "elbo_nll", "elbo_nll_all", "bpd", "elbo_bpd", "khat_mean", "train_seconds"):
            assert _finite(row[key]), key
        assert row["nll"] > 0 and row["train_seconds"] >= 0.2  # the budget was spent

    diffusion.main(["report", "--runs", str(runs), "--results-dir", str(out)])
    text = (out / "diffusion.md").read_text()
    assert text.startswith("# Diffusion model vs VAE")
    assert "| model | epochs | train CPU s (wall) | IS NLL (nats) |" in text
    assert "| diffusion {'num_steps': 2" in text and "| vae {'latent_dim': 8" in text


# ---------------------------------------------------------------- samplers.py


def test_samplers_digits(tmp_path, committed_untouched):
    """One VAE epoch, N=50, 2 sample seeds (the classifier and the samplers' epochs are fixed per dataset)."""
    out = tmp_path / "results"
    samplers.main(["--dataset", "digits", "--epochs", "1", "--num-samples", "50", "--repeats", "2",
                   "--results-dir", str(out)])
    names = {"prior", "gmm", "maf", "two_stage"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["samplers_digits.json", "zoo.md", *(f"samplers_digits_{n}.png" for n in names)])
    result = json.loads((out / "samplers_digits.json").read_text())
    assert {"dataset", "num_samples", "repeats", "vae", "classifier", "rows", "commit", "command"} <= result.keys()
    assert result["num_samples"] == 50 and result["vae"]["epochs"] == 1
    assert 0.5 < result["classifier"]["test_accuracy"] <= 1.0
    assert [r["sampler"] for r in result["rows"]] == ["data (training images)", "prior", "gmm", "maf", "two_stage"]
    for row in result["rows"]:
        assert len(row["fd"]) == 2 and all(_finite(fd) and fd >= 0 for fd in row["fd"])
    floor = sum(result["rows"][0]["fd"]) / 2
    assert all(sum(r["fd"]) / 2 > floor for r in result["rows"][1:])  # one epoch is far from the data
    for name in names:
        assert (out / f"samplers_digits_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "zoo.md").read_text()
    assert text.startswith(samplers.BEGIN) and text.rstrip().endswith(samplers.END)  # a new zoo.md: the section
    assert "| sampler | options | FD (mean ± s.e.) | fit s | samples |" in text
    assert "![gmm](samplers_digits_gmm.png)" in text
    assert samplers.NOTES["digits"][1] not in text  # the committed run's discussion does not describe this one
    assert "describes another run, whose prior FD was 23.7; this table is shown without it" in text
    committed = samplers.section()  # the committed runs' section keeps its discussion
    assert samplers.NOTES["digits"][1] in committed and samplers.NOTES["mnist"][1] in committed

    # --report-only rebuilds the section in place and keeps the rest of the page
    (out / "zoo.md").write_text("# notes above\n\n" + text)
    samplers.main(["--report-only", "--results-dir", str(out)])
    again = (out / "zoo.md").read_text()
    assert again.startswith("# notes above\n\n" + samplers.BEGIN) and again.count(samplers.BEGIN) == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("run", [
    lambda d: perf.main(["report", "--results-dir", d]),
    lambda d: distributed.main(["--part", "ddp", "--results-dir", d]),
    lambda d: diffusion.main(["report", "--runs", str(Path(d).parent), "--results-dir", d]),
    lambda d: diffusion.main(["run", "--runs", str(Path(d).parent / "runs"), "--results-dir", d]),
    lambda d: samplers.main(["--report-only", "--results-dir", d]),
], ids=["perf", "distributed", "diffusion-report", "diffusion-run", "samplers"])
def test_results_dir_that_is_a_file_is_refused(run, tmp_path, capsys, committed_untouched):
    taken = tmp_path / "a-file"
    taken.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        run(str(taken))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument --results-dir: '{taken}' is a file, not a folder" in err and "Traceback" not in err
    assert taken.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]

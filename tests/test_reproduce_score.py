"""benchmarks/reproduce.py's ``score`` shares a row's final protocol with its run: blocks that another
process scores, from the last one back, are bit for bit the blocks the run itself would score."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits beside tests/

from benchmarks import reproduce
from pyro_genmod.bench.metrics import block_path
from tests.test_datasets import write_idx


@pytest.fixture
def small_protocol(tmp_path, monkeypatch):
    """A fake MNIST (1,100 training images, 1,000 test: two blocks of 500) and a cheap protocol."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_idx(raw, "train", rng.integers(10, size=1100))
    write_idx(raw, "t10k", rng.integers(10, size=1000))
    monkeypatch.setattr(reproduce, "FINAL_K", 6)
    monkeypatch.setattr(reproduce, "CURVE_K", 4)
    monkeypatch.setattr(reproduce, "CURVE_POINTS", 20)
    return tmp_path / "data", tmp_path / "runs"


def _blocks(folder):
    return {path.name: np.load(path)["per_point"] for path in sorted(folder.glob("points-*.npz"))}


def test_score_takes_the_blocks_from_the_end_and_matches_the_run(small_protocol):
    root, runs = small_protocol
    final = reproduce.run_row("vae1_k1", runs, root, epochs=16, batch_size=50, every=16)
    assert final["eval_points"] == 1000 and final["eval_K"] == 6
    eval_folder = runs / "vae1_k1" / "eval"
    by_run = _blocks(eval_folder)
    assert list(by_run) == ["points-000000-000500.npz", "points-000500-001000.npz"]
    block_path(eval_folder, 500, 1000).unlink()  # as if the run had scored only the first block so far
    assert reproduce.score_row("vae1_k1", runs, root) == 1
    shared = _blocks(eval_folder)
    assert list(shared) == list(by_run)
    for name in by_run:
        assert np.array_equal(shared[name], by_run[name])  # the same numbers, whoever scored the block
    assert reproduce.score_row("vae1_k1", runs, root) == 0  # nothing left to score
    cut = block_path(eval_folder, 0, 500)
    cut.write_bytes(cut.read_bytes()[:100])  # a block file cut short (written by something other than the run)
    with pytest.warns(RuntimeWarning, match="is unreadable"):
        assert reproduce.score_row("vae1_k1", runs, root) == 1  # scored again, not skipped
    assert np.array_equal(_blocks(eval_folder)["points-000000-000500.npz"], by_run["points-000000-000500.npz"])


def test_score_refuses_a_row_still_training(small_protocol):
    root, runs = small_protocol
    with pytest.raises(SystemExit, match="holds no run of vae1_k1"):
        reproduce.score_row("vae1_k1", runs, root)
    reproduce.run_row("vae1_k1", runs, root, epochs=16, batch_size=50, every=16)
    setup = json.loads((runs / "vae1_k1" / "setup.json").read_text())
    setup["epochs"] = 20  # the run asked for more epochs than its checkpoint holds
    (runs / "vae1_k1" / "setup.json").write_text(json.dumps(setup))
    with pytest.raises(SystemExit, match="has trained 16 of 20 epochs; score it once its training has finished"):
        reproduce.score_row("vae1_k1", runs, root)


def test_ais_share_scores_the_missing_blocks_from_the_end_as_the_row_would(small_protocol):
    root, runs = small_protocol
    reproduce.run_row("vae1_k1", runs, root, epochs=16, batch_size=50, every=16)
    options = dict(points=20, steps=3, chains=2, leapfrog=1, block=10)
    result = reproduce.ais_row("vae1_k1", runs, root, **options)
    assert result["points"] == 20 and np.isfinite(result["ais_nll"]) and np.isfinite(result["is_misses"])
    folder = runs / "vae1_k1" / "ais-T3-K2-L1-block10"
    by_row = _blocks(folder)
    assert list(by_row) == ["points-000000-000010.npz", "points-000010-000020.npz"]
    (runs / "vae1_k1" / "ais.json").unlink()
    block_path(folder, 10, 20).unlink()  # as if the row's own `ais` had scored only the first block
    assert reproduce.ais_row("vae1_k1", runs, root, share=True, **options) == {"scored": 1}
    assert not (runs / "vae1_k1" / "ais.json").exists()  # the sharing process leaves the result to the row's
    shared = _blocks(folder)
    assert list(shared) == list(by_row) and all(np.array_equal(shared[n], by_row[n]) for n in by_row)
    assert reproduce.ais_row("vae1_k1", runs, root, share=True, **options) == {"scored": 0}
    again = reproduce.ais_row("vae1_k1", runs, root, **options)  # the row's result, read from the shared blocks
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in result.items() if k != "seconds"}

"""benchmarks/reproduce.py's report merges a live runs folder with the rows an earlier report collected."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits beside tests/

from benchmarks import reproduce

CURVE = "epoch,train_seconds,nll_1k,nll_1k_stderr,val_elbo,train_elbo,lr,eval_seconds\n"


def _final(row, nll):
    return {"row": row, "nll": nll, "nll_stderr": 0.2, "published": reproduce.ROWS[row]["published"],
            "epochs": 10, "batch_size": 100, "train_seconds": 3600.0, "threads": 1, "khat_above_0.7": 0.5,
            "active_units": [20], "latent_dims": [50]}


def test_report_merges_a_runs_folder_with_collected_rows(tmp_path):
    live = tmp_path / "reproduce-burda-short"  # a runs folder: ROW/FILE
    (live / "iwae1_k5").mkdir(parents=True)
    (live / "iwae1_k5" / "setup.json").write_text(json.dumps({"epochs": 500, "batch_size": 100, "init": "burda"}))
    (live / "iwae1_k5" / "curve.csv").write_text(CURVE + "1,10.0,121.5,1.0,-134.1,-146.7,0.001,30.0\n")
    old = tmp_path / "collected" / "burda-init"  # what an earlier report copied: ROW.FILE
    old.mkdir(parents=True)
    for row, nll in (("vae1_k1", 88.10), ("vae2_k1", 85.97)):
        (old / f"{row}.setup.json").write_text(json.dumps({"epochs": 1000, "batch_size": 100, "init": "burda"}))
        (old / f"{row}.final.json").write_text(json.dumps(_final(row, nll)))
    (old / "iwae1_k5.setup.json").write_text(json.dumps({"epochs": 1000, "batch_size": 100, "init": "burda"}))
    (old / "iwae1_k5.curve.csv").write_text(CURVE + "750,8582.4,86.48,0.73,-95.4,-90.0,0.0001,13.2\n")
    out = tmp_path / "results"
    text = reproduce.write_report([live, old], out=out).read_text()
    table = [line for line in text.splitlines() if line.startswith("| burda-")]
    assert "| burda-short | burda | 1 | IWAE | 5 | in training: 121.50" in table[0]
    assert "| burda-short | burda | 2 | IWAE | 5 | not started" in table[1]  # in no folder
    assert not any("not started" in line and "| VAE |" in line for line in table)  # collected rows count
    assert any("| burda-init | burda | 1 | VAE | 1 | **88.10**" in line for line in table)
    assert any("stopped: 86.48" in line and "750 of 1000, stopped" in line for line in table)
    # without trained parameters beside a collected final row, AIS cannot run: said so, not "not run yet"
    assert all("trained state was lost" in line for line in table if "**" in line)
    assert (out / "reproduce" / "burda-short" / "iwae1_k5.curve.csv").is_file()  # the live row's files copied
    assert not (out / "reproduce" / "burda-init").exists()  # a collected folder is read where it is

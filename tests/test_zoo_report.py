"""benchmarks/zoo.py: sample grids for a grid's trained cells and zoo.md rebuilt from its table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits beside tests/

from benchmarks import zoo
from pyro_genmod.bench import load_config, run_bench

CONFIG = """
name = "tiny_zoo"
title = "tiny digits zoo"
notes = "A made-up protocol line."
results_dir = "{root}/results"
runs_dir = "{root}/runs/tiny_zoo"
[grid]
datasets = ["digits"]
models = ["vae"]
guides = ["mean_field"]
objectives = ["trace_elbo", "iwae:3"]
seeds = [0]
[training]
epochs = 1
batch_size = 512
[evaluation]
num_samples = 20
max_points = 50
khat_points = 0
eval_block = 25
probe_points = 100
kl_samples = 2
[models.vae]
latent_dim = 3
hidden = [16]
[guides.mean_field]
hidden = [16]
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    path = root / "tiny_zoo.toml"
    path.write_text(CONFIG.format(root=root.as_posix()))
    rows = run_bench(path, progress=False)
    assert [row["status"] for row in rows] == ["ok", "ok"]
    return root, path


def test_grids_write_one_scaled_png_per_trained_cell(grid):
    root, path = grid
    out = root / "grids"
    assert zoo.main(["grids", str(path), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["tiny_zoo__digits__vae__mean_field__iwae-k3__seed0.png",
                     "tiny_zoo__digits__vae__mean_field__trace_elbo-k1__seed0.png"]
    # 8 x 8 samples of 8 x 8 pixels with 1-pixel padding (73 pixels), each pixel drawn 3 x 3 (28 // 8)
    for name in names:
        with Image.open(out / name) as image:
            assert image.size == (219, 219)
            assert np.unique(np.asarray(image.convert("L"))).size > 2  # samples, not a blank page


def test_report_rebuilds_its_block_and_keeps_the_rest(grid):
    root, path = grid
    out, page = root / "grids", root / "zoo.md"
    zoo.main(["grids", str(path), "--out", str(out)])
    samplers = "<!-- samplers.py: begin -->\n## Ex-post samplers\nkept as written\n<!-- samplers.py: end -->"
    page.write_text(f"# hand-written notes above\n\n{samplers}\n")
    args = ["report", str(path), "--out", str(out), "--zoo-md", str(page), "--no-samplers"]
    assert zoo.main(args) == 0
    first = page.read_text()
    assert zoo.main(args) == 0  # a second report replaces its block, never appends another
    text = page.read_text()
    assert text == first
    assert text.count(zoo.BEGIN) == 1 and text.count("## tiny digits zoo") == 1
    assert "# hand-written notes above" in text and samplers in text  # others' sections kept
    assert "A made-up protocol line." in text
    config = load_config(path)
    for cell in config.cells():
        link = f"[64 samples](grids/{zoo.grid_name(config, cell)})"
        rows = [line for line in text.splitlines() if line.startswith("| ") and link in line]
        assert len(rows) == 2, cell  # its row in the summary and in the config's table
        assert any(f"| {cell.objective_name} | {cell.k} |" in row and "/3 |" in row for row in rows)


def test_report_says_when_a_config_has_no_results(tmp_path):
    path = tmp_path / "tiny_zoo.toml"
    path.write_text(CONFIG.format(root=tmp_path.as_posix()))
    page = tmp_path / "zoo.md"
    assert zoo.main(["report", str(path), "--zoo-md", str(page), "--no-samplers"]) == 0
    assert "No results yet" in page.read_text()


def test_a_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[grid]\ndatasets = []\n')
    assert zoo.main(["report", str(path), "--zoo-md", str(tmp_path / "zoo.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo.py: error:") and err.count("\n") == 1


def test_a_config_missing_from_the_first_results_folder_is_read_from_the_next(grid, tmp_path):
    root, path = grid
    page, empty = tmp_path / "zoo.md", tmp_path / "new-runs-results"
    empty.mkdir()
    args = ["report", str(path), "--zoo-md", str(page), "--no-samplers", "--out", str(root / "grids")]
    assert zoo.main([*args, "--results-dir", str(empty)]) == 0
    assert "No results yet" in page.read_text()
    assert zoo.main([*args, "--results-dir", str(empty), "--results-dir", str(root / "results")]) == 0
    text = page.read_text()
    assert "No results yet" not in text and text.count("| digits | vae | mean_field | iwae | 3 |") == 2


def test_the_cifar10_config_builds_and_trains_on_cifar_shaped_data():
    """zoo_cifar10.toml cannot run here (no CIFAR-10): its pair is built from the config's own options on
    random 3x32x32 images of 256 levels, trained a few steps and scored, bits per dimension included."""
    import math

    import torch

    import pyro_genmod as pg
    from pyro_genmod.estimates import bits_per_dim

    config = load_config(Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "zoo_cifar10.toml")
    cell = config.cells()[0]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 32, 32), generator=generator).float() / 255
    data = pg.Dataset(name="cifar10", train=images[:32], val=images[32:40], test=images[40:], binarization="none",
                      options={})
    model = pg.create_model(cell.model, data, **config.raw["models"]["vae"])
    guide = pg.create_guide(cell.guide, model, **config.raw["guides"]["mean_field"])
    result = pg.fit(model, guide, data, epochs=1, batch_size=16, progress=False, seed=0)
    assert math.isfinite(result.history[-1]["val_elbo"])
    ll = pg.log_likelihood(model, guide, data.test, 4, seed=0, khat=False)
    assert torch.isfinite(ll.per_point).all()
    assert bool((ll.per_point >= ll.elbo - 1e-4).all())  # the IS bound is never looser than the ELBO
    # a discrete likelihood: each pixel's probability is at most 1, so log p(x) <= 0 and bits per dimension > 0
    assert float(ll.per_point.max()) < 0 and bits_per_dim(float(ll.mean), 3 * 32 * 32) > 0

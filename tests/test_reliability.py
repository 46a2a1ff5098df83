"""Silently wrong results and defaults that fail (issue 20): each test here failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pyro_genmod as pg
from pyro_genmod.bench import run_bench
from pyro_genmod.cli import main

TINY = ["--epochs", "1", "--batch-size", "512", "--latent-dim", "2", "--model-opt", "hidden=[8]",
        "--guide-opt", "hidden=[8]", "-K", "4", "--quiet"]


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# --- 1: options arrive as their declared type -------------------------------------------------


@pytest.mark.parametrize("word", ["False", "false", "no", "NO", "off", "Off", "0"])
def test_a_false_word_turns_a_bool_dataset_option_off(word):
    data = pg.load_dataset("digits", binarize=word)
    assert data.binarization == "none" and data.options["binarize"] is False
    assert not ((data.val == 0) | (data.val == 1)).all()  # grey levels kept, not binarized


@pytest.mark.parametrize("word", ["True", "yes", "ON", "1"])
def test_a_true_word_turns_a_bool_dataset_option_on(word):
    data = pg.load_dataset("digits", binarize=word)
    assert data.binarization == "dynamic" and data.options["binarize"] is True


def test_binarize_false_on_the_command_line_keeps_grey_levels(tmp_path):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--data-opt", "binarize=False", "--likelihood", "gaussian", "--out", str(out)]
    assert main(argv) == 0
    assert _config(out)["dataset"]["options"]["binarize"] is False


@pytest.mark.parametrize(
    "options, match",
    [
        ({"latent_dim": 2.5}, "option 'latent_dim' must be an integer, got 2.5"),
        ({"latent_dim": True}, "option 'latent_dim' must be an integer, got True"),
        ({"latent_dim": "2"}, "option 'latent_dim' must be a number, got '2'"),
        ({"hidden": 8}, "option 'hidden' must be a list"),
        ({"likelihood": 3}, "option 'likelihood' must be text"),
    ],
)
@pytest.mark.parametrize("name", ["vae", "cvae"])  # cvae passes latent_dim on to VAE through **options
def test_model_options_of_the_wrong_type_are_refused(name, options, match):
    with pytest.raises(pg.ConfigError, match=match):
        pg.create_model(name, (1, 8, 8), **options)


def test_integral_numbers_are_accepted_for_int_options_and_stored_as_int():
    model = pg.create_model("vae", (1, 8, 8), latent_dim=3.0, hidden=[8])
    assert model.latent_dim == 3 and model.init_kwargs["latent_dim"] == 3
    assert isinstance(model.init_kwargs["latent_dim"], int)


def test_guide_options_are_typed():
    model = pg.create_model("vae", (1, 8, 8), latent_dim=2, hidden=[8])
    guide = pg.create_guide("iaf", model, conditional="no", hidden=[8], num_flows=1)
    assert guide.init_kwargs["conditional"] is False
    with pytest.raises(pg.ConfigError, match="option 'rank' must be an integer, got 1.5"):
        pg.create_guide("low_rank", model, rank=1.5)
    with pytest.raises(pg.ConfigError, match="option 'conditional' must be true or false, got 'maybe'"):
        pg.create_guide("iaf", model, conditional="maybe")


def test_a_bench_config_with_a_fractional_int_option_fails_its_cell(tmp_path):
    config = tmp_path / "typed.toml"
    config.write_text(
        f'name = "typed"\nresults_dir = "{tmp_path.as_posix()}/results"\nruns_dir = "{tmp_path.as_posix()}/runs"\n'
        '[grid]\ndatasets = ["digits"]\nmodels = ["vae"]\nguides = ["mean_field"]\nobjectives = ["trace_elbo"]\n'
        '[training]\nepochs = 1\n[models.vae]\nlatent_dim = 2.5\n'
    )
    rows = run_bench(config, progress=False)
    assert [row["status"] for row in rows] == ["failed"]
    assert "option 'latent_dim' must be an integer, got 2.5" in rows[0]["error"]

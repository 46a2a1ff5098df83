"""Silently wrong results and defaults that fail (issue 20): each test here failed before its fix."""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

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


# --- 2: a blow-up is caught even while the loss stays finite -----------------------------------


def test_lr_10_on_the_default_setup_stops_as_diverged(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--lr", "10", "-K", "20", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged" in err[0] and "smaller learning rate" in err[0], err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_reason"].startswith("diverged")
    assert metrics["test_elbo"] > -100  # the restored (untrained) pair, not a blown-up one (-8.7e4)


def test_a_normal_run_on_the_default_setup_completes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "8", "-K", "20", "--quiet", "--out", str(out)]) == 0
    assert "(completed)" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["stopped_reason"] == "completed"


def _pair(data, **options):
    torch.manual_seed(0)
    model = pg.create_model("vae", data, latent_dim=2, hidden=[32], **options)
    return model, pg.create_guide("mean_field", model, hidden=[32])


def test_a_learning_rate_that_wrecks_the_first_epoch_is_caught_and_the_start_restored(digits):
    model, guide = _pair(digits)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pg.TrainingDiverged, match="far below the untrained model's") as caught:
        pg.fit(model, guide, digits, lr=1.0, epochs=5, progress=False)
    assert "smaller learning rate than 1.0" in str(caught.value)
    assert caught.value.result.stopped_reason.startswith("diverged")
    assert all(torch.equal(initial[k], v) for k, v in model.state_dict().items())


def _wreck_after(step_count: int, model):
    """An optimizer hook that, after the ``step_count``-th step, throws the decoder's weights far off
    (as one huge update would), so the next validation sees a blown-up model."""
    steps = [0]

    def hook(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] == step_count:
            with torch.no_grad():
                for p in model.decoder.parameters():
                    p.mul_(60.0)

    return hook


def test_a_validation_elbo_far_below_its_best_stops_the_fit(digits):
    model, guide = _pair(digits)
    steps_per_epoch = -(-digits.train.shape[0] // 128)
    hook = register_optimizer_step_post_hook(_wreck_after(3 * steps_per_epoch, model))
    try:
        # beta < 1: only the drop-from-best rule applies (the untrained-model rule needs beta >= 1)
        with pytest.raises(pg.TrainingDiverged, match="nats below its best") as caught:
            pg.fit(model, guide, digits, lr=1e-3, epochs=6, beta=0.99, progress=False)
    finally:
        hook.remove()
    result = caught.value.result
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert "restored to the end of epoch 2" in str(caught.value)


def test_one_outlying_batch_is_not_a_divergence():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(600, 4, generator=generator)
    train[7] = 300.0  # one far outlier: its batch's loss is thousands of times the others'
    data = pg.Dataset("outlier", train, torch.randn(60, 4, generator=generator), torch.randn(60, 4, generator=generator))
    model, guide = _pair(data, likelihood="gaussian")
    result = pg.fit(model, guide, data, epochs=6, batch_size=64, progress=False)
    assert result.stopped_reason == "completed" and result.epochs_run == 6


# --- 3: a file dataset records where its data is and what it was ------------------------------


def _write_csv(path: Path, x: np.ndarray) -> Path:
    path.write_text("".join(",".join(repr(float(v)) for v in row) + "\n" for row in x))
    return path


def _binary_rows(flip: bool = False) -> np.ndarray:
    x = (np.random.default_rng(0).random((40, 6)) > 0.5).astype(np.float64)
    if flip:
        x[3, 2] = 1 - x[3, 2]
    return x


def test_a_file_dataset_records_the_absolute_path_and_the_content_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write_csv(tmp_path / "points.csv", _binary_rows())
    data = pg.load_dataset("file", path="points.csv")
    assert data.options["path"] == str(path.absolute())
    assert data.options["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "allow_changed" not in data.options
    again = pg.load_dataset("file", **data.options)  # the same content under its recorded hash
    assert torch.equal(again.train, data.train)


def test_a_changed_file_is_refused_unless_allowed(tmp_path):
    path = _write_csv(tmp_path / "points.csv", _binary_rows())
    options = pg.load_dataset("file", path=str(path)).options
    _write_csv(path, _binary_rows(flip=True))
    with pytest.raises(pg.DataError, match="has changed since this run loaded it .*allow_changed=true"):
        pg.load_dataset("file", **options)
    changed = pg.load_dataset("file", **options, allow_changed="yes")
    assert changed.options["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != options["sha256"]


def test_evaluate_finds_the_data_from_another_folder_and_refuses_it_once_edited(tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _write_csv(tmp_path / "a" / "points.csv", _binary_rows())
    assert main(["train", *TINY, "--dataset", "file", "--data-opt", "path=points.csv", "--out", "run"]) == 0
    monkeypatch.chdir(tmp_path / "b")  # the path was typed relative to a/
    run = str(tmp_path / "a" / "run")
    assert main(["evaluate", run]) == 0
    _write_csv(tmp_path / "a" / "points.csv", _binary_rows(flip=True))
    capsys.readouterr()
    assert main(["evaluate", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has changed since this run loaded it" in err[0], err
    assert main(["evaluate", run, "--allow-changed-data"]) == 0


def test_allow_changed_data_is_refused_for_a_new_run(tmp_path, capsys):
    assert main(["train", *TINY, "--allow-changed-data", "--out", str(tmp_path / "run")]) == 2
    assert "--allow-changed-data goes with --resume" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- 4: a NaN k-hat is unknown reliability, not reliable ----------------------------------------


def _scores(khat) -> pg.LogLikelihood:
    n = len(khat)
    return pg.LogLikelihood(per_point=-torch.ones(n), elbo=-torch.ones(n), khat=np.array(khat, dtype=float), num_samples=4)


def test_nan_khat_is_counted_apart_from_the_reliable_and_the_unreliable():
    scores = _scores([0.2, np.nan, 0.9, np.nan])
    assert (scores.khat_reliable, scores.khat_above_07, scores.khat_nan, scores.khat_nan_count) == (0.25, 0.25, 0.5, 2)
    every_nan = _scores([np.nan] * 3)
    assert every_nan.khat_reliable == 0.0 and every_nan.khat_nan == 1.0
    assert every_nan.summary()["khat_nan"] == 1.0 and every_nan.summary()["khat_above_0.7"] == 0.0


def test_scoring_warns_when_khat_is_nan_and_was_asked_for(trained_vae, digits):
    model, guide = trained_vae
    with pytest.warns(pg.KhatWarning, match="k-hat is NaN for 5 of 5 points"):
        few = pg.log_likelihood(model, guide, digits.test[:5], 4, seed=0)
    assert few.khat_nan == 1.0 and few.khat_reliable == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", pg.KhatWarning)
        assert pg.log_likelihood(model, guide, digits.test[:5], 4, seed=0, khat=False).khat_nan == 1.0
        assert pg.log_likelihood(model, guide, digits.test[:5], 200, seed=0).khat_nan == 0.0


def test_the_score_printout_shows_the_share_of_nan_khat(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0  # TINY scores with K=4: no k-hat
    printed = capsys.readouterr()
    assert "100.0% with NaN k-hat (reliability unknown" in printed.out and "Warning" not in printed.err
    assert json.loads((out / "metrics.json").read_text())["khat_nan"] == 1.0
    assert main(["evaluate", str(out), "-K", "100"]) == 0
    assert "NaN k-hat" not in capsys.readouterr().out


# --- 5: arviz is capped below 1.x, which breaks the InferenceData code path ---------------------


def test_the_arviz_requirement_excludes_1x():
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (arviz,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "arviz"]
    assert arviz.specifier.contains("0.23.0") and not arviz.specifier.contains("1.0.0")
    assert not arviz.specifier.contains("1.2.0")


# --- 6: the default likelihood follows the data -------------------------------------------------


@pytest.mark.parametrize("dataset", ["iris", "wine", "two_moons"])
def test_real_valued_datasets_train_with_the_default_options(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", dataset, "--epochs", "2", "-K", "10", "--quiet", "--out", str(out)]) == 0
    assert "--likelihood gaussian, since dataset" in capsys.readouterr().err
    assert _config(out)["model"]["options"]["likelihood"] == "gaussian"
    assert pg.load_run(out).model.observation.name == "gaussian"


def test_a_real_valued_csv_trains_with_the_default_options(tmp_path):
    path = _write_csv(tmp_path / "real.csv", np.random.default_rng(0).normal(size=(60, 3)) * 5)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "file", "--data-opt", f"path={path}", "--out", str(out)]) == 0
    assert _config(out)["model"]["options"]["likelihood"] == "gaussian"


def test_create_model_picks_the_likelihood_from_a_dataset_unless_told(digits):
    iris = pg.load_dataset("iris")
    assert pg.create_model("vae", iris).observation.name == "gaussian"
    assert pg.create_model("cvae", iris).init_kwargs["likelihood"] == "gaussian"
    assert pg.create_model("vae", iris, likelihood="continuous_bernoulli").observation.name == "continuous_bernoulli"
    assert pg.create_model("vae", digits).observation.name == "bernoulli"  # binarized dynamically
    assert "likelihood" not in pg.create_model("vae", digits).init_kwargs  # the model's own default
    grey = pg.load_dataset("digits", binarize=False)
    assert pg.create_model("vae", grey).observation.name == "gaussian"
    assert pg.create_model("vae", grey.shape).observation.name == "bernoulli"  # a shape says nothing of values
    assert pg.create_model("ppca", iris).init_kwargs == {}  # no likelihood option: nothing added


def test_binary_data_without_binarization_keeps_bernoulli(tmp_path):
    path = _write_csv(tmp_path / "binary.csv", _binary_rows())
    assert pg.create_model("vae", pg.load_dataset("file", path=str(path))).observation.name == "bernoulli"


def test_run_experiment_on_iris_needs_no_likelihood(tmp_path):
    from pyro_genmod.experiment import run_experiment

    metrics, result, _ = run_experiment("vae", "mean_field", pg.load_dataset("iris"), epochs=2, num_samples=10, progress=False)
    assert result.stopped_reason == "completed" and math.isfinite(metrics["test_elbo"])


# --- 7: a model that needs its own guide gets it, and the pairing hint names guides that work ---


M2_TINY = ["--model", "m2", "--epochs", "1", "--batch-size", "512", "--latent-dim", "2", "--model-opt", "hidden=[8]",
           "-K", "4", "--quiet"]


def test_m2_trains_without_naming_its_guide(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *M2_TINY, "--guide-opt", "hidden=[8]", "--out", str(out)]) == 0
    assert _config(out)["guide"]["name"] == "m2"


def test_run_experiment_takes_the_models_default_guide(digits):
    from pyro_genmod.experiment import run_experiment
    from pyro_genmod.factories import default_guide

    assert (default_guide("m2"), default_guide("vae"), default_guide("gmm")) == ("m2", "mean_field", "mean_field")
    _, result, _ = run_experiment(
        "m2", None, digits, model_options={"latent_dim": 2, "hidden": [8]}, guide_options={"hidden": [8]},
        num_samples=4, epochs=1, batch_size=512, progress=False,
    )
    assert result.guide.registry_name == "m2"


@pytest.mark.parametrize("model_name", ["m2", "gmm"])
def test_the_pairing_error_names_guides_that_then_fit(model_name, tmp_path, capsys):
    assert main(["train", "--model", model_name, "--guide", "mean_field", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "choose a guide that fits it: " in err, err
    hinted = err.split("choose a guide that fits it: ")[1].split(", ")
    assert hinted and "mean_field" not in hinted
    model = pg.create_model(model_name, (1, 8, 8))
    for name in hinted:  # following the hint works
        assert pg.create_guide(name, model) is not None


# --- 8: create_model refuses a tensor, whose shape counts the points too ------------------------


@pytest.mark.parametrize("as_array", [False, True])
def test_create_model_refuses_a_tensor_of_points(digits, as_array):
    x = digits.train.numpy() if as_array else digits.train
    with pytest.raises(pg.ConfigError, match=r"of shape \(1297, 1, 8, 8\); pass a Dataset or the shape of one point"):
        pg.create_model("vae", x)
    assert pg.create_model("vae", digits.train.shape[1:]).data_shape == (1, 8, 8)  # the fix it names


@pytest.mark.parametrize("shape", [4, "abc", (0, 3), (True,), ()])
def test_create_model_refuses_what_is_not_a_point_shape(shape):
    with pytest.raises(pg.ConfigError, match="the shape of one point as a tuple of positive integers"):
        pg.create_model("vae", shape)


# --- 9: fit takes a tensor of points with a documented split, and refuses a DataLoader ----------


def test_fit_trains_on_a_tensor_of_points_holding_out_a_tenth(digits):
    from pyro_genmod.train import as_training_data

    x = digits.train  # grey levels: used as they are, no binarization
    split = as_training_data(x, seed=3)
    assert (split.train.shape[0], split.val.shape[0]) == (1167, 130) and split.binarization == "none"
    assert torch.equal(torch.cat([split.train, split.val]).sort(dim=0).values, x.sort(dim=0).values)  # a split of x
    assert torch.equal(as_training_data(x, seed=3).val, split.val) and not torch.equal(as_training_data(x, seed=4).val, split.val)
    model, guide = _pair(x.shape[1:], likelihood="gaussian")
    result = pg.fit(model, guide, x, epochs=2, seed=3, progress=False)
    assert result.epochs_run == 2 and result.stopped_reason == "completed"
    numpy_result = pg.fit(*_pair(x.shape[1:], likelihood="gaussian"), x.numpy(), epochs=1, progress=False)
    assert numpy_result.epochs_run == 1


def test_fit_refuses_a_dataloader_with_one_clear_error(digits):
    loader = torch.utils.data.DataLoader(digits.train, batch_size=64)
    with pytest.raises(pg.ConfigError, match="got a DataLoader .*pass the tensor of points and batch_size="):
        pg.fit(*_pair(digits), loader, epochs=1, progress=False)
    with pytest.raises(pg.ConfigError, match="a Dataset .* or a tensor of training points"):
        pg.fit(*_pair(digits), [[0.0, 1.0]], epochs=1, progress=False)


# --- 10: genmod --version -----------------------------------------------------------------------


def test_genmod_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pyro-genmod {pg.__version__}" == f"pyro-genmod {version('pyro-genmod')}"


# --- resource limits: scoring with any K holds a bounded number of weights ---------------------


def _small_pair(digits):
    torch.manual_seed(0)
    model = pg.create_model("vae", digits, latent_dim=2, hidden=[8])
    return model, pg.create_guide("mean_field", model, hidden=[8])


def test_streamed_scoring_gives_the_numbers_of_scoring_all_k_weights_at_once(digits):
    """K above max_rows is streamed; the estimate, the ELBO and PSIS k-hat are those of the whole
    (K, N) matrix of the same draws (k-hat: arviz.psislw on all K weights)."""
    from pyro_genmod.arviz_bridge import psis_khat
    from pyro_genmod.importance import log_importance_weights
    from pyro_genmod.seeding import seeded

    model, guide = _small_pair(digits)
    x, k, rows = digits.test[:3], 1500, 400
    ll = pg.log_likelihood(model, guide, x, k, max_rows=rows, seed=3)
    with seeded(3), torch.no_grad():  # the same draws, in the same chunks, kept whole
        w = torch.cat([
            torch.cat([log_importance_weights(model, guide, x[i : i + 1], min(rows, k - j)) for j in range(0, k, rows)])
            for i in range(3)
        ], dim=1).double()
    torch.testing.assert_close(ll.per_point, (torch.logsumexp(w, 0) - math.log(k)).float())
    torch.testing.assert_close(ll.elbo, w.mean(0).float())
    np.testing.assert_allclose(ll.khat, psis_khat(w.T.numpy()), rtol=1e-12)
    assert np.isfinite(ll.khat).all()


def test_scoring_never_allocates_a_tensor_of_k_weights(digits):
    """Every tensor torch makes while scoring K = 40,000 with max_rows = 256 is far smaller than K:
    the decoder's chunk (256 x 64) and the PSIS tail (601 weights), not a (K, N) matrix."""
    from torch.overrides import TorchFunctionMode

    class Largest(TorchFunctionMode):
        numel = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    model, guide = _small_pair(digits)
    k = 40_000
    with Largest():
        ll = pg.log_likelihood(model, guide, digits.test[:1], k, max_rows=256, seed=0)
    assert np.isfinite(ll.khat).all() and torch.isfinite(ll.per_point).all()
    assert 256 * 64 <= Largest.numel < k / 2, Largest.numel


def test_scoring_shows_progress_when_asked(digits, capsys):
    model, guide = _small_pair(digits)
    pg.log_likelihood(model, guide, digits.test[:2], 600, max_rows=256, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "scoring" in err and "1.20k" in err, err  # tqdm counts the 2 x 600 draws


# --- points of other dtypes are converted by one rule ------------------------------------------


@pytest.mark.parametrize("convert", [
    lambda x: x.double(), lambda x: x.long(), lambda x: x.bool(), lambda x: x.numpy(), lambda x: x.numpy().astype(">f8"),
], ids=["float64", "int64", "bool", "ndarray", "big-endian ndarray"])
def test_points_of_other_dtypes_score_as_their_float32_values(digits, convert):
    model, guide = _small_pair(digits)
    x = digits.test[:4]  # binary pixels: every dtype holds them exactly
    want = pg.log_likelihood(model, guide, x, 50, seed=1)
    got = pg.log_likelihood(model, guide, convert(x), 50, seed=1)
    torch.testing.assert_close(got.per_point, want.per_point, rtol=0, atol=0)
    torch.testing.assert_close(pg.encode(guide, convert(x)), pg.encode(guide, x), rtol=0, atol=0)


def test_inference_gaps_convert_float64_points(digits):
    model, guide = _small_pair(digits)
    x = digits.test[:2]
    want = pg.inference_gaps(model, guide, x, num_samples=20, steps=2, num_particles=2, seed=0)
    got = pg.inference_gaps(model, guide, x.double(), num_samples=20, steps=2, num_particles=2, seed=0)
    torch.testing.assert_close(got.total, want.total, rtol=0, atol=0)


def test_the_largest_seed_is_accepted(digits):
    model, guide = _small_pair(digits)
    assert torch.isfinite(pg.log_likelihood(model, guide, digits.test[:2], 5, seed=2**32 - 1, khat=False).per_point).all()


# --- data files: byte order, float128, byte-order marks -----------------------------------------


@pytest.mark.parametrize("dtype", [">f8", ">i4", np.longdouble, "<f4"], ids=["big-endian float64", "big-endian int32", "float128", "float32"])
def test_npy_files_of_any_real_dtype_load_as_their_values(tmp_path, dtype):
    x = (np.random.default_rng(0).random((40, 6)) > 0.5).astype(np.float64)
    np.save(tmp_path / "native.npy", x)
    np.save(tmp_path / "other.npy", x.astype(dtype))
    want = pg.load_dataset("file", path=str(tmp_path / "native.npy"))
    got = pg.load_dataset("file", path=str(tmp_path / "other.npy"))
    for split in ("train", "val", "test"):
        torch.testing.assert_close(getattr(got, split), getattr(want, split), rtol=0, atol=0)


def test_a_csv_with_a_utf8_byte_order_mark_loads(tmp_path):
    rows = "0,1,0\n1,1,0\n" * 10
    (tmp_path / "plain.csv").write_text(rows, encoding="utf-8")
    (tmp_path / "bom.csv").write_text(rows, encoding="utf-8-sig")  # as Excel saves "CSV UTF-8"
    assert (tmp_path / "bom.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    want = pg.load_dataset("file", path=str(tmp_path / "plain.csv"))
    got = pg.load_dataset("file", path=str(tmp_path / "bom.csv"))
    torch.testing.assert_close(got.train, want.train, rtol=0, atol=0)


def test_a_failed_download_is_one_line_naming_where_to_put_the_files(tmp_path, monkeypatch):
    """torchvision's real downloader, pointed at a closed local port (no network needed or used)."""
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(pg.DataError) as caught:
        pg.load_dataset("mnist", root=str(tmp_path), download=True)
    message = str(caught.value)
    assert "\n" not in message and "the download failed" in message, message
    assert f"'{tmp_path / 'MNIST' / 'raw'}'" in message and "--data-root" in message, message


def test_a_truncated_evaluation_block_is_scored_again_not_fatal(digits, tmp_path):
    """A block file cut short (a crash or a full disk mid-write) is rescored, with a warning; the
    numbers are those of an evaluation that was never interrupted (block i is seeded seed + i)."""
    from pyro_genmod.bench.metrics import blockwise_log_likelihood

    model, guide = _small_pair(digits)
    x = digits.test[:12]
    kwargs = dict(seed=0, block=5, khat_points=None)
    clean, _ = blockwise_log_likelihood(model, guide, x, 30, folder=tmp_path / "clean", **kwargs)
    blockwise_log_likelihood(model, guide, x, 30, folder=tmp_path / "cut", **kwargs)
    middle = tmp_path / "cut" / "points-000005-000010.npz"
    middle.write_bytes(middle.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="points-000005-000010.npz' is unreadable"):
        again, _ = blockwise_log_likelihood(model, guide, x, 30, folder=tmp_path / "cut", **kwargs)
    torch.testing.assert_close(again.per_point, clean.per_point, rtol=0, atol=0)
    np.testing.assert_array_equal(again.khat, clean.khat)
    with np.load(middle) as rewritten, np.load(tmp_path / "clean" / middle.name) as original:
        np.testing.assert_array_equal(rewritten["per_point"], original["per_point"])  # the block file is whole again

"""Posterior diagnostics: NUTS reference against the exact PPCA posterior, ArviZ files, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyro_genmod as pg
from pyro_genmod import arviz_bridge as diagnostics
from pyro_genmod.cli import main
from pyro_genmod.experiment import run_experiment


@pytest.fixture(scope="module")
def ppca():
    """A 5-dimensional PPCA with 2 correlated latents (random W), and 3 points drawn from it."""
    model = pg.create_model("ppca", (5,), latent_dim=2)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(5, 2, generator=generator))
        model.log_noise_scale.fill_(np.log(0.7))
    x = pg.sample(model, 3, seed=2).detach()
    return model, x


@pytest.fixture(scope="module")
def diagnosed(ppca, tmp_path_factory):
    model, x = ppca
    guide = pg.create_guide("exact_posterior", model)
    out = tmp_path_factory.mktemp("diagnose")
    result = pg.diagnose(
        model, guide, x, points=[10, 11, 12], num_chains=4, num_warmup=300, num_draws=500,
        num_guide_samples=1000, num_importance=500, seed=0, out=out,
    )
    return model, x, result, out


def test_nuts_reference_matches_exact_posterior(diagnosed):
    model, x, result, _ = diagnosed
    exact = model.exact_posterior(x)["z"]
    mean = exact.mean.detach().numpy().ravel()
    sd = exact.variance.sqrt().detach().numpy().ravel()
    table = result.table
    # NUTS estimates are within 4 Monte Carlo standard errors (az.summary's mcse_mean and
    # mcse_sd, from the bulk ESS) of the closed form: for 12 checks at a normal 4-sigma level
    # the chance of a false failure is about 12 * 6e-5.
    assert np.all(np.abs(table["ref_mean"] - mean) <= 4 * table["mcse_mean"])
    assert np.all(np.abs(table["ref_sd"] - sd) <= 4 * table["mcse_sd"])
    assert np.all(table["r_hat"] < 1.01)
    assert np.all(table["ess_bulk"] >= 400) and result.warnings == []
    # the exact-posterior guide's draws agree with NUTS within both Monte Carlo errors
    guide_se = sd / np.sqrt(1000)
    assert np.all(np.abs(table["mean_error"]) <= 4 * np.sqrt(table["mcse_mean"] ** 2 + guide_se**2))


def test_inference_data_dims_and_netcdf_round_trip(diagnosed):
    _, x, result, out = diagnosed
    for name, idata in (("reference.nc", result.reference), ("guide.nc", result.guide)):
        loaded = diagnostics.read_netcdf(out / name)
        z = loaded.posterior["z"]
        assert z.dims == ("chain", "draw", "point", "latent")
        assert list(z.coords["point"].values) == [10, 11, 12]
        np.testing.assert_array_equal(z.values, idata.posterior["z"].values)
        np.testing.assert_allclose(loaded.observed_data["x"].values, x.numpy())
    assert result.reference.posterior["z"].shape == (4, 500, 3, 2)
    assert "diverging" in result.reference.sample_stats


def test_report_and_plots_written(diagnosed):
    _, _, result, out = diagnosed
    for name in ("report.md", "summary.csv", "table.csv", "points.csv", "khat.png", "pair.png", "reconstructions.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "## Per point" in report and "khat" in report
    # exact posterior: constant importance weights, so log p(x) - ELBO is zero
    np.testing.assert_allclose(result.points["kl_q_p"], 0.0, atol=1e-4)
    assert set(result.summary.columns) >= {"ess_bulk", "ess_tail", "r_hat"}


def test_convergence_warning_on_short_chains(ppca):
    model, x = ppca
    guide = pg.create_guide("mean_field", model)
    with pytest.warns(RuntimeWarning, match="ESS bulk"):
        result = pg.diagnose(model, guide, x[:1], num_chains=4, num_warmup=20, num_draws=20, num_importance=50)
    assert any("ESS" in w for w in result.warnings)
    assert "WARNING" in result.report()


def test_discrete_latents_refused():
    model = pg.create_model("gmm", (2,))
    guide = pg.create_guide("categorical", model)
    with pytest.raises(pg.ConfigError, match="continuous latent"):
        pg.diagnose(model, guide, torch.zeros(2, 2))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("runs") / "vae"
    run_experiment(
        "vae", "mean_field", digits, model_options={"latent_dim": 2}, num_samples=20, out=out,
        epochs=1, batch_size=256, progress=False,
    )
    return out


def test_cli_diagnose_writes_files_and_prints_summary(tiny_run, capsys):
    code = main([
        "diagnose", str(tiny_run), "--points", "2", "--warmup", "40", "--draws", "40", "-K", "100", "--quiet",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "## Per point" in captured.out and "r_hat" in captured.out
    folder = tiny_run / "diagnose"
    for name in ("reference.nc", "guide.nc", "report.md", "khat.png", "pair.png", "reconstructions.png"):
        assert (folder / name).is_file(), name
    assert diagnostics.read_netcdf(folder / "reference.nc").posterior["z"].shape == (4, 40, 2, 2)


def test_cli_diagnose_refuses_discrete_run(tmp_path, capsys):
    data = pg.load_dataset("iris")
    out = tmp_path / "gmm"
    run_experiment("gmm", "categorical", data, num_samples=10, out=out, epochs=1, progress=False)
    assert main(["diagnose", str(out), "--points", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genmod: error:") and "continuous latent" in err and "\n" not in err

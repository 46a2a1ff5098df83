"""Plain Pyro programs as models and guides: Pyro's tutorial VAE, and user models of every kind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO

import pyro_genmod as pg
from pyro_genmod.objectives import get_objective
from pyro_genmod.programs import ProgramGuide, ProgramModel
from user_code.tutorial_vae import VAE


@pytest.fixture(scope="module")
def digits28() -> pg.Dataset:
    """scikit-learn's digits upsampled to 28x28, so the tutorial's 784-pixel networks fit as written."""
    grey = pg.load_dataset("digits", binarize=False)
    up = lambda t: F.interpolate(t, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)  # noqa: E731
    once = lambda t, s: torch.bernoulli(up(t), generator=torch.Generator().manual_seed(s))  # noqa: E731
    return pg.Dataset(name="digits28", train=up(grey.train), val=once(grey.val, 1), test=once(grey.test, 2),
                      binarization="dynamic")


def _vae(seed=0, **kw):
    torch.manual_seed(seed)
    return VAE(**{"z_dim": 4, "hidden_dim": 32, **kw})


def test_the_tutorial_vae_trains_scores_samples_and_encodes(digits28):
    pyro.clear_param_store()
    vae = _vae()
    before = vae.decoder.fc1.weight.detach().clone()
    result = pg.fit(vae.model, vae.guide, digits28, epochs=4, progress=False)
    assert isinstance(result.model, ProgramModel) and isinstance(result.guide, ProgramGuide)
    assert [s.name for s in result.model.latent_sites] == ["latent"] and result.model.data_plate == "data"
    assert result.model.observed_sites == {"obs": (784,)}
    assert not torch.equal(vae.decoder.fc1.weight, before)  # the user's own network was trained in place
    assert len(pyro.get_param_store()) == 0  # and Pyro's global param store was never used
    assert result.history[-1]["val_elbo"] > result.history[0]["val_elbo"]
    ll = pg.log_likelihood(vae.model, vae.guide, digits28.test[:40], 100, seed=0)
    assert ll.per_point.shape == (40,) and bool(torch.isfinite(ll.per_point).all())
    assert ll.mean >= ll.elbo_mean - 3 * ll.stderr  # IS is at least the ELBO, up to noise
    assert ll.mean == pytest.approx(result.history[-1]["val_elbo"], abs=15)
    x = pg.sample(vae.model, 5, seed=0)
    assert x.shape == (5, 1, 28, 28) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert pg.sample(vae.model, 5, mean=True, seed=0).shape == (5, 1, 28, 28)
    assert pg.encode(vae.guide, digits28.test[:6]).shape == (6, 4)


def _copy_into_builtin(vae: VAE, digits28):
    """The zoo's ``vae`` with the tutorial decoder's weights (softplus hidden layer, logits out)."""
    builtin = pg.create_model("vae", digits28, latent_dim=4, hidden=[32], activation="softplus").double()
    with torch.no_grad():
        builtin.decoder[0].weight.copy_(vae.decoder.fc1.weight), builtin.decoder[0].bias.copy_(vae.decoder.fc1.bias)
        builtin.decoder[2].weight.copy_(vae.decoder.fc21.weight), builtin.decoder[2].bias.copy_(vae.decoder.fc21.bias)
    return builtin


def test_tutorial_log_weights_equal_the_builtin_vae_with_the_same_weights_and_draws(digits28):
    vae = _vae().double()
    x = digits28.test[:30].double()
    user = pg.ProgramModel(vae.model, x)
    builtin = _copy_into_builtin(vae, digits28)
    guides = [pg.create_guide("mean_field", m, hidden=[16]).double() for m in (user, builtin)]
    guides[1].load_state_dict(guides[0].state_dict())
    weights = []
    for model, guide in zip((user, builtin), guides):
        torch.manual_seed(3)
        with torch.no_grad():
            weights.append(pg.log_importance_weights(model, guide, x, 7))
    assert weights[0].shape == (7, 30)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-5)


def test_the_training_loss_of_a_program_is_pyros_trace_elbo(digits28):
    """Same draws, same loss and gradients as Trace_ELBO.differentiable_loss (no silent difference)."""
    vae = _vae()
    x = digits28.test[:16]
    model = pg.ProgramModel(vae.model, x)
    guide = pg.ProgramGuide(vae.guide, model, x)
    results = []
    for compute in (lambda: get_objective("trace_elbo")(model, guide, x)[0],
                    lambda: Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)):
        vae.zero_grad()
        torch.manual_seed(11)
        loss = compute()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in vae.parameters()]))
    pyro.clear_param_store()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _fitting_guides(model):
    return [name for name in pg.list_guides() if pg.pairing_problem(name, model) is None]


def test_every_fitting_guide_family_is_built_for_a_user_model_and_trains(digits28):
    vae = _vae()
    model = pg.ProgramModel(vae.model, digits28)
    names = _fitting_guides(model)
    assert {"mean_field", "full_rank", "iaf", "planar", "low_rank", "prior"} <= set(names), names
    for name in names:
        guide = pg.create_guide(name, vae.model, digits28)
        result = pg.fit(vae.model, guide, digits28, epochs=1, batch_size=512, progress=False)
        assert math.isfinite(result.history[-1]["val_elbo"]), name


def test_two_pairs_in_one_process_do_not_share_parameters(digits28):
    a, b = _vae(seed=1), _vae(seed=1)
    pg.fit(a.model, a.guide, digits28, epochs=1, batch_size=512, progress=False)
    assert torch.equal(b.decoder.fc1.weight, _vae(seed=1).decoder.fc1.weight)  # b untouched by a's fit
    assert not torch.equal(a.decoder.fc1.weight, b.decoder.fc1.weight)


# --- user models of other kinds -----------------------------------------------------------


class Nets(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.net = torch.nn.Linear(inputs, outputs)


def two_sites_positive_simplex(x):
    """Two Normal sites, a LogNormal and a Gamma (positive) and a Dirichlet (simplex)."""
    dec = pyro.module("dec", DECODER)
    n = x.shape[0]
    with pyro.plate("batch", n):
        a = pyro.sample("a", dist.Normal(torch.zeros(n, 2), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(torch.zeros(n, 3), 1.0).to_event(1))
        s = pyro.sample("s", dist.LogNormal(torch.zeros(n, 1), 0.5).to_event(1))
        g = pyro.sample("g", dist.Gamma(torch.full((n, 1), 2.0), 2.0).to_event(1))
        w = pyro.sample("w", dist.Dirichlet(torch.ones(n, 3)))
        h = torch.cat([a, b, s.log(), g.log(), w], -1)
        pyro.sample("x", dist.Bernoulli(logits=dec.net(h)).to_event(1), obs=x.reshape(n, -1))


DECODER = Nets(2 + 3 + 1 + 1 + 3, 64)


def test_positive_and_simplex_and_several_sites_are_found_and_trained(digits):
    model = pg.ProgramModel(two_sites_positive_simplex, digits)
    sites = {s.name: (s.event_shape, pg.latents.describe_support(s.support)) for s in model.latent_sites}
    assert sites == {"a": ((2,), "real"), "b": ((3,), "real"), "s": ((1,), "positive"),
                     "g": ((1,), "nonnegative"), "w": ((3,), "simplex")}
    assert model.data_plate == "batch"
    for name in ("mean_field", "iaf"):
        guide = pg.create_guide(name, model)
        result = pg.fit(two_sites_positive_simplex, guide, digits, epochs=2, batch_size=256, progress=False)
        assert math.isfinite(result.history[-1]["val_elbo"]), name
        ll = pg.log_likelihood(model, guide, digits.test[:10], 50)
        assert bool(torch.isfinite(ll.per_point).all())


def mixture(x):
    """An enumerated discrete latent: Pyro's idiom for a mixture."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    probs = pyro.param("probs", lambda: torch.full((3, flat.shape[1]), 0.5), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", n):
        k = pyro.sample("k", dist.Categorical(torch.ones(n, 3) / 3), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Bernoulli(probs[k]).to_event(1), obs=flat)


def test_an_enumerated_discrete_latent_is_found_and_paired_with_a_discrete_guide(digits):
    model = pg.ProgramModel(mixture, digits)
    (site,) = model.latent_sites
    assert site.name == "k" and site.discrete and site.event_shape == ()
    with pytest.raises(pg.PairingError, match="'k' discrete"):
        pg.create_guide("mean_field", model)
    guide = pg.create_guide("categorical", model)
    before = model.params.params["probs"].detach().clone()  # pyro.param lives with the pair
    result = pg.fit(model, guide, digits, epochs=2, batch_size=256, objective="traceenum_elbo", progress=False)
    assert not torch.equal(before, model.params.params["probs"])
    assert math.isfinite(result.history[-1]["val_elbo"])
    ll = pg.log_likelihood(model, guide, digits.test[:8], 16)  # the discrete proposal q(k|x)
    assert bool(torch.isfinite(ll.per_point).all())


def global_latent(x):
    n = x.shape[0]
    theta = pyro.sample("theta", dist.Normal(torch.zeros(64), 1.0).to_event(1))
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Normal(torch.zeros(n, 2), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=theta + z.sum(-1, keepdim=True)).to_event(1), obs=x.reshape(n, -1))


def test_a_global_latent_is_refused_naming_the_site(digits):
    with pytest.raises(pg.ConfigError, match="latent site 'theta' is outside the data plate 'data'"):
        pg.fit(global_latent, lambda x: None, digits, epochs=1, progress=False)
    with pytest.raises(pg.ConfigError, match="'theta'"):
        pg.log_likelihood(global_latent, lambda x: None, digits.test[:4], 10)


def test_guide_sites_that_differ_from_the_model_are_refused_before_training(digits28):
    vae = _vae()

    def renamed(x):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = vae.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def reshaped(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", dist.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(1))

    def positive(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", dist.LogNormal(torch.zeros(x.shape[0], 4), 1.0).to_event(1))

    before = vae.decoder.fc1.weight.detach().clone()
    for guide, match in ((renamed, "does not sample latent site 'latent'"), (reshaped, "shape"),
                         (positive, "support")):
        with pytest.raises(pg.PairingError, match=match):
            pg.fit(vae.model, guide, digits28, epochs=1, progress=False)
    assert torch.equal(vae.decoder.fc1.weight, before)


def test_programs_that_cannot_be_scored_per_point_say_why(digits):
    def no_plate(x):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))
        pyro.sample("x", dist.Bernoulli(logits=torch.zeros(x.shape[0], 64)).to_event(2), obs=x.reshape(-1, 64))

    def broken(x):
        raise RuntimeError("shapes do not match")

    with pytest.raises(pg.ConfigError, match="no plate over the data points"):
        pg.ProgramModel(no_plate, digits)
    with pytest.raises(pg.ConfigError, match="RuntimeError: shapes do not match"):
        pg.ProgramModel(broken, digits)
    with pytest.raises(pg.ConfigError, match="has not traced yet"):
        pg.sample(lambda x: None, 3)


def test_diagnose_and_gaps_work_with_a_site_named_latent(digits28, tmp_path):
    vae = _vae()
    guide = pg.create_guide("mean_field", vae.model, digits28, hidden=[16])
    pg.fit(vae.model, guide, digits28, epochs=2, batch_size=256, progress=False)
    gaps = pg.inference_gaps(vae.model, guide, digits28.test[:3], num_samples=50, steps=10)
    assert gaps.approximation.shape == (3,)
    report = pg.diagnose(vae.model, vae.guide, digits28.test[:2], num_chains=1, num_warmup=10, num_draws=10,
                         num_guide_samples=20, num_importance=20, out=tmp_path / "diag")
    assert "latent" in report.reference.posterior and (tmp_path / "diag" / "reconstructions.png").is_file()


def test_a_programs_parameters_are_checkpointed_and_resumed_bitwise(digits28, tmp_path):
    """pyro.module parameters (the tutorial) and pyro.param ones (a mixture) resume bit for bit."""
    def run(folder, epochs, resume=False, make=None):
        folder.mkdir(exist_ok=True)
        vae = make()
        result = pg.fit(vae.model, vae.guide, digits28, epochs=epochs, batch_size=256, checkpoint=folder,
                        resume=resume, progress=False)
        return {k: v.clone() for k, v in result.model.state_dict().items()}

    whole = run(tmp_path / "whole", 3, make=lambda: _vae(seed=4))
    run(tmp_path / "parts", 1, make=lambda: _vae(seed=4))
    resumed = run(tmp_path / "parts", 3, resume=True, make=lambda: _vae(seed=99))  # other init: overwritten
    assert whole.keys() == resumed.keys() and any("decoder" in k for k in whole)
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_pyro_param_parameters_resume_bitwise(digits, tmp_path):
    states = []
    for folder, plan in (("whole", [(2, False)]), ("parts", [(1, False), (2, True)])):
        (tmp_path / folder).mkdir()
        for epochs, resume in plan:
            model = pg.ProgramModel(mixture, digits)
            torch.manual_seed(0 if not resume else 5)  # a resumed fit overwrites the new guide's init
            guide = pg.create_guide("categorical", model, hidden=[8])
            pg.fit(model, guide, digits, epochs=epochs, batch_size=512, objective="traceenum_elbo",
                   checkpoint=tmp_path / folder, resume=resume, progress=False)
        states.append(model.params.params["probs"].detach().clone())
    assert torch.equal(states[0], states[1])


# --- the command line and run folders ----------------------------------------------------------


def test_cli_trains_a_user_program_from_a_file_and_loading_it_needs_trust(tmp_path, capsys):
    import numpy as np

    from pyro_genmod.cli import main
    from test_datasets import write_idx

    write_idx(tmp_path / "data" / "MNIST" / "raw", "train", np.random.default_rng(0).integers(10, size=120))
    write_idx(tmp_path / "data" / "MNIST" / "raw", "t10k", np.random.default_rng(1).integers(10, size=12))
    source = (Path(__file__).parent / "user_code" / "tutorial_vae.py").read_text()
    marker = tmp_path / "imported"
    user = tmp_path / "my_vae.py"  # the tutorial, plus a line that shows when the file is executed
    user.write_text(source + f"\nopen({str(marker)!r}, 'a').write('x')\n")
    run = tmp_path / "run"
    common = ["--dataset", "mnist", "--data-root", str(tmp_path / "data"), "--data-opt", "num_val=20", "-K", "8", "--quiet"]
    argv = ["train", "--model", f"{user}:vae.model", "--guide", f"{user}:guide", "--epochs", "2", *common, "--out", str(run)]
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["source"]["file"] == str(user) and len(config["model"]["source"]["sha256"]) == 64
    marker.unlink()
    for command in (["evaluate", str(run), "-K", "4"], ["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")],
                    ["diagnose", str(run), "--points", "1", "--chains", "1", "--warmup", "5", "--draws", "5"]):
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--trust-code" in err and f"{user}:vae.model" in err, err
        assert not marker.exists(), f"{command[0]} imported the user's code without --trust-code"
        assert main([*command, "--trust-code"]) == 0, command
        assert marker.exists()
        marker.unlink()
    assert (tmp_path / "s.png").is_file()


def test_a_killed_user_program_run_resumes_only_with_trust(tmp_path):
    """Resume of a run whose checkpoint names user code: refused without --trust-code, then bitwise."""
    import numpy as np

    from pyro_genmod.checkpoint import CHECKPOINT_FILE
    from pyro_genmod.cli import main
    from test_datasets import write_idx

    write_idx(tmp_path / "data" / "MNIST" / "raw", "train", np.random.default_rng(0).integers(10, size=120))
    write_idx(tmp_path / "data" / "MNIST" / "raw", "t10k", np.random.default_rng(1).integers(10, size=12))
    user = Path(__file__).parent / "user_code" / "tutorial_vae.py"
    common = ["--model", f"{user}:model", "--guide", "mean_field", "--dataset", "mnist", "--data-root",
              str(tmp_path / "data"), "--data-opt", "num_val=20", "-K", "8", "--quiet", "--batch-size", "50"]
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "part")]) == 0
    # turn the finished one-epoch run into an interrupted three-epoch one: keep only its checkpoint,
    # as a run killed after its first epoch leaves it, with the epoch budget of the whole run
    for name in ("config.json", "metrics.json", "history.csv", "params.safetensors"):
        (tmp_path / "part" / name).unlink()
    from pyro_genmod.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tmp_path / "part" / CHECKPOINT_FILE)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("version", "sha256")}
    meta["spec"]["fit"]["epochs"] = 3
    save_checkpoint(tmp_path / "part" / CHECKPOINT_FILE, ckpt.tensors, meta)
    assert main(["train", "--resume", str(tmp_path / "part"), "--quiet"]) == 2
    assert main(["train", "--resume", str(tmp_path / "part"), "--quiet", "--trust-code"]) == 0
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / f / "params.safetensors")) for f in ("whole", "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", pg.list_models())
def test_every_zoo_models_declared_sites_match_its_trace(name, digits):
    """The zoo's models are Pyro programs too: tracing one finds exactly the latent sites it
    declares (name, shape, support, discrete), its data plate and its observed site ``x``."""
    from pyro_genmod.latents import describe_support
    from pyro_genmod.programs import trace_sites

    data = pg.load_dataset("iris") if name in ("ppca", "factor_analysis", "gmm") else digits
    model = pg.create_model(name, data)
    x = data.train[:3]
    x = torch.bernoulli(x) if data.binarization == "dynamic" else x
    found = trace_sites(model, x, f"model '{name}'")

    def key(site):
        return site.name, tuple(site.event_shape), describe_support(site.support), site.discrete

    assert sorted(map(key, found.latent)) == sorted(map(key, model.latent_sites))
    assert found.data_plate == model.data_plate and list(found.observed) == ["x"]


def test_a_bench_grid_names_user_code_and_scores_it_again_from_its_runs(tmp_path):
    import numpy as np

    from pyro_genmod.bench import run_bench
    from test_datasets import write_idx

    write_idx(tmp_path / "data" / "MNIST" / "raw", "train", np.random.default_rng(0).integers(10, size=120))
    write_idx(tmp_path / "data" / "MNIST" / "raw", "t10k", np.random.default_rng(1).integers(10, size=12))
    user = Path(__file__).parent / "user_code" / "tutorial_vae.py"
    config = tmp_path / "grid.toml"
    config.write_text(
        f'name = "user"\nresults_dir = "{tmp_path / "results"}"\nruns_dir = "{tmp_path / "runs"}"\n'
        f'[grid]\ndatasets = ["mnist"]\nmodels = ["{user}:model"]\nguides = ["{user}:guide", "mean_field"]\n'
        'objectives = ["trace_elbo"]\nseeds = [0]\n[training]\nepochs = 1\nbatch_size = 50\n'
        '[evaluation]\nnum_samples = 4\nprobe_points = 20\n[datasets.mnist]\nnum_val = 20\n'
    )
    rows = run_bench(config, progress=False, data_root=tmp_path / "data")
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    for result in (tmp_path / "runs").glob("*/result.json"):
        result.unlink()  # the trained runs stay: the grid scores them again, loading the user's code
    rows = run_bench(config, progress=False, data_root=tmp_path / "data")
    assert [r["status"] for r in rows] == ["ok", "ok"], rows

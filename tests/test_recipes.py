"""Training recipes: optimizer, learning-rate schedule and gradient clipping in ``fit``."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod.optim import (
    BURDA_EPOCHS, burda_milestones, create_lr_schedule, create_optimizer, load_schedule_state, schedule_state,
)

ROOT = Path(__file__).resolve().parents[1]


def _pair(digits, seed=0):
    torch.manual_seed(seed)
    model = pg.create_model("vae", digits, latent_dim=2, hidden=[8])
    return model, pg.create_guide("mean_field", model, hidden=[8])


def test_burda_schedule_gives_the_papers_rate_at_the_first_epoch_of_every_stage():
    """Burda et al. (2015), Section 5: 3^i epochs at 1e-3 * 10^(-i/7), i = 0..7 (3,280 epochs)."""
    assert BURDA_EPOCHS == 3280 and burda_milestones() == [1, 4, 13, 40, 121, 364, 1093]
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, "adam", {"eps": 1e-4})
    assert optimizer.param_groups[0]["eps"] == 1e-4
    scheduler = create_lr_schedule(optimizer, "burda")
    rates = []  # the rate used during each epoch 1..3280
    for _ in range(BURDA_EPOCHS):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    first_epoch = 1
    for i in range(8):
        stage = rates[first_epoch - 1 : first_epoch - 1 + 3**i]
        assert len(stage) == 3**i
        assert stage[0] == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
        assert all(r == stage[0] for r in stage)
        first_epoch += 3**i
    assert first_epoch - 1 == BURDA_EPOCHS


def test_scheduler_state_survives_json():
    """Checkpoints store the scheduler's state as JSON; a reloaded scheduler continues identically."""
    import json

    for name, options in (("burda", None), ("StepLR", {"step_size": 2, "gamma": 0.5}),
                          ("ReduceLROnPlateau", {"patience": 0}), ("constant", None)):
        runs = []
        for reload in (False, True):
            p = torch.nn.Parameter(torch.zeros(2))
            optimizer = create_optimizer([p], 1e-3)
            scheduler = create_lr_schedule(optimizer, name, options)
            rates = []
            for epoch in range(12):
                if reload and epoch == 5:
                    state = json.loads(json.dumps(schedule_state(scheduler)))
                    group = json.loads(json.dumps(optimizer.state_dict()["param_groups"]))
                    optimizer = create_optimizer([p], 1e-3)
                    optimizer.param_groups[0]["lr"] = group[0]["lr"]
                    scheduler = create_lr_schedule(optimizer, name, options)
                    load_schedule_state(scheduler, state)
                rates.append(optimizer.param_groups[0]["lr"])
                from pyro_genmod.optim import step_schedule

                step_schedule(scheduler, val_elbo=-10.0)  # a plateau: ReduceLROnPlateau lowers the rate
            runs.append(rates)
        assert runs[0] == runs[1], name
        if name != "constant":
            assert runs[0][-1] < runs[0][0], name


def test_fit_records_the_recipe_and_the_rate_of_every_epoch(digits):
    model, guide = _pair(digits)
    result = pg.fit(
        model, guide, digits, epochs=3, batch_size=512, progress=False, optimizer="rmsprop",
        optimizer_options={"alpha": 0.9}, lr_schedule="ExponentialLR", lr_schedule_options={"gamma": 0.5},
        clip_grad_norm=10.0,
    )
    assert [row["lr"] for row in result.history] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert result.options["optimizer"] == "rmsprop" and result.options["lr_schedule"] == "ExponentialLR"
    assert result.options["optimizer_options"] == {"alpha": 0.9} and result.options["clip_grad_norm"] == 10.0
    default = pg.fit(*_pair(digits), digits, epochs=1, batch_size=512, progress=False)
    assert not {"optimizer", "lr_schedule", "clip_grad_norm"} & set(default.options)


def test_optimizer_class_and_schedule_function_are_accepted(digits):
    model, guide = _pair(digits)
    result = pg.fit(
        model, guide, digits, epochs=2, batch_size=512, progress=False, optimizer=torch.optim.SGD,
        optimizer_options={"momentum": 0.9},
        lr_schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1),
    )
    assert [row["lr"] for row in result.history] == pytest.approx([1e-3, 1e-4])
    assert result.options["optimizer"] == "torch.optim.sgd.SGD"


def test_clipping_bounds_every_update(digits):
    """With SGD at lr 1 and the gradient norm clipped to c, no step moves the parameters more than c."""
    model, guide = _pair(digits)
    before = torch.cat([p.detach().flatten().clone() for p in [*model.parameters(), *guide.parameters()]])
    pg.fit(model, guide, digits, epochs=1, batch_size=2000, lr=1.0, progress=False, optimizer="sgd",
           clip_grad_norm=1e-3)  # one full-batch step
    after = torch.cat([p.detach().flatten() for p in [*model.parameters(), *guide.parameters()]])
    moved = float((after - before).norm())
    assert 0 < moved <= 1e-3 * (1 + 1e-4)
    unclipped = _pair(digits)
    before = torch.cat([p.detach().flatten().clone() for p in [*unclipped[0].parameters(), *unclipped[1].parameters()]])
    # unclipped, the same step at lr 1 blows the model up (fit stops it as diverged); at lr 1e-4 it
    # still moves more than 1e-2, so the gradient norm exceeds 100 and the clip at lr 1 was binding
    pg.fit(*unclipped, digits, epochs=1, batch_size=2000, lr=1e-4, progress=False, optimizer="sgd")
    after = torch.cat([p.detach().flatten() for p in [*unclipped[0].parameters(), *unclipped[1].parameters()]])
    assert float((after - before).norm()) > 10 * 1e-3


def test_a_scheduler_object_is_refused(digits):
    model, guide = _pair(digits)
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(pg.ConfigError, match="not a scheduler object"):
        pg.fit(model, guide, digits, epochs=1, progress=False,
               lr_schedule=torch.optim.lr_scheduler.StepLR(other, step_size=1))
    with pytest.raises(pg.ConfigError, match="not inside optimizer_options"):
        pg.fit(model, guide, digits, epochs=1, progress=False, optimizer_options={"lr": 0.1})


def test_resume_refuses_a_changed_recipe(digits, tmp_path):
    model, guide = _pair(digits)
    pg.fit(model, guide, digits, epochs=1, batch_size=512, checkpoint=tmp_path, progress=False, lr_schedule="burda")
    with pytest.raises(pg.ConfigError, match="lr_schedule"):
        pg.fit(*_pair(digits), digits, epochs=2, batch_size=512, checkpoint=tmp_path, resume=True, progress=False)


def test_committed_bench_configs_hold_no_machine_paths():
    for path in sorted((ROOT / "benchmarks" / "configs").glob("*.toml")):
        config = tomllib.loads(path.read_text())
        for name, options in config.get("datasets", {}).items():
            root = options.get("root")
            assert root is None or not Path(root).is_absolute(), f"{path.name}: [datasets.{name}] root = {root!r}"
        for key in ("runs_dir", "results_dir"):
            value = config.get(key)
            assert value is None or not Path(value).is_absolute(), f"{path.name}: {key} = {value!r}"


def test_data_root_comes_from_the_command_line_or_the_environment(tmp_path, monkeypatch):
    from test_datasets import NUM_TEST, NUM_TRAIN, write_idx
    import numpy as np

    raw = tmp_path / "somewhere" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw, "train", rng.integers(10, size=NUM_TRAIN))
    write_idx(raw, "t10k", rng.integers(10, size=NUM_TEST))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pg.DataError, match="MNIST"):
        pg.load_dataset("mnist", num_val=10)  # ./data has no MNIST
    monkeypatch.setenv("GENMOD_DATA_ROOT", str(tmp_path / "somewhere"))
    data = pg.load_dataset("mnist", num_val=10)
    assert data.train.shape[0] + data.val.shape[0] == NUM_TRAIN and math.isfinite(float(data.test.sum()))
    # genmod bench --data-root: a config without a root finds the data through the flag
    monkeypatch.delenv("GENMOD_DATA_ROOT")
    config = tmp_path / "grid.toml"
    config.write_text(
        'name = "tiny"\nresults_dir = "results"\n[grid]\ndatasets = ["mnist"]\nmodels = ["vae"]\n'
        'guides = ["mean_field"]\nobjectives = ["trace_elbo"]\nseeds = [0]\n'
        '[training]\nepochs = 1\nbatch_size = 64\noptimizer = "adam"\noptimizer_options = {eps = 1e-4}\n'
        'lr_schedule = "burda"\nclip_grad_norm = 100.0\n'
        '[evaluation]\nnum_samples = 4\nprobe_points = 10\n[datasets.mnist]\nnum_val = 10\n'
        '[models.vae]\nlatent_dim = 2\nhidden = [8]\n[guides.mean_field]\nhidden = [8]\n'
    )
    from pyro_genmod.cli import main

    assert main(["bench", str(config), "--quiet", "--data-root", str(tmp_path / "somewhere")]) == 0
    assert "ok" in (tmp_path / "results" / "tiny.csv").read_text()


def test_burda_schedule_compressed_keeps_its_eight_stages():
    assert burda_milestones(1000) == [1, 2, 5, 13, 38, 112, 334]
    ends = burda_milestones(1000) + [1000]
    lengths = [b - a for a, b in zip([0] + ends, ends)]
    assert sum(lengths) == 1000 and lengths == sorted(lengths) and lengths[-1] == 666
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3)
    scheduler = create_lr_schedule(optimizer, "burda", {"epochs": 1000})
    for _ in range(999):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 10 ** (-1), rel=1e-12)
    with pytest.raises(pg.ConfigError, match="epochs >= 16"):
        create_lr_schedule(optimizer, "burda", {"epochs": 5})
    with pytest.raises(pg.ConfigError, match="constant"):
        create_lr_schedule(optimizer, "constant", {"gamma": 0.5})

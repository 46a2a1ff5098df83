"""Torch threads: the default follows the idle CPUs, fit(threads=) computes with the count it is
given and restores the caller's, and the CLI and bench configs take it and refuse bad values."""

from __future__ import annotations

import pytest
import torch

import pyro_genmod as pg
from pyro_genmod import threads as threads_module
from pyro_genmod.bench import load_config
from pyro_genmod.callbacks import Callback
from pyro_genmod.cli import main


@pytest.fixture
def machine(monkeypatch):
    """Set the CPUs, the load average and torch's count that default_threads sees."""

    def set_machine(cpus: int, load: float, torch_count: int) -> int:
        monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
        monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (load, load, load))
        monkeypatch.setattr(threads_module.torch, "get_num_threads", lambda: torch_count)
        threads_module.default_threads.cache_clear()
        return threads_module.default_threads()

    yield set_machine
    threads_module.default_threads.cache_clear()


@pytest.mark.parametrize("cpus, load, torch_count, expected", [
    (4, 0.1, 4, 4),  # idle: torch's own count
    (4, 0.1, 2, 2),  # never more than torch's count (OMP_NUM_THREADS, physical cores)
    (4, 1.2, 4, 3),  # one CPU busy
    (2, 2.0, 2, 1),  # both busy (two training jobs): one thread
    (2, 9.5, 2, 1),  # far oversubscribed: still one
    (16, 0.0, 32, 16),  # no more than the CPUs this process may use
])
def test_default_threads_is_torchs_count_lowered_to_the_idle_cpus(machine, cpus, load, torch_count, expected):
    assert machine(cpus, load, torch_count) == expected


def test_the_default_is_decided_once_per_process(machine, monkeypatch):
    assert machine(4, 0.0, 4) == 4
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (3.0, 3.0, 3.0))  # e.g. this process's own fits
    assert threads_module.default_threads() == 4


class _SeeThreads(Callback):
    every_n_steps = 1

    def __init__(self):
        self.seen: set[int] = set()

    def on_step(self, event):
        self.seen.add(torch.get_num_threads())


@pytest.mark.parametrize("threads", [1, 2])
def test_fit_computes_with_the_threads_asked_and_restores_the_callers(digits, threads):
    before = torch.get_num_threads()
    other = 3 if before != 3 else 4
    torch.set_num_threads(other)
    try:
        seen = _SeeThreads()
        torch.manual_seed(0)
        model = pg.create_model("vae", digits, latent_dim=2, hidden=[8])
        guide = pg.create_guide("mean_field", model, hidden=[8])
        result = pg.fit(model, guide, digits, epochs=1, batch_size=512, progress=False, threads=threads, callbacks=[seen])
        assert seen.seen == {threads} and result.threads == threads
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_fit_refuses_a_thread_count_that_is_not_a_positive_integer(digits, bad):
    model = pg.create_model("vae", digits, latent_dim=2, hidden=[8])
    guide = pg.create_guide("mean_field", model, hidden=[8])
    with pytest.raises(pg.ConfigError, match="threads must be a positive integer"):
        pg.fit(model, guide, digits, epochs=1, progress=False, threads=bad)


def test_cli_train_takes_threads_and_refuses_zero(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["train", "--epochs", "1", "-K", "10", "--quiet", "--latent-dim", "2", "--threads", "1",
                     "--out", str(tmp_path / "run")]) == 0
        assert torch.get_num_threads() == 1  # training and scoring
    finally:
        torch.set_num_threads(before)
    assert main(["train", "--threads", "0", "--out", str(tmp_path / "other")]) == 2
    assert "--threads: expected a positive integer, got 0" in capsys.readouterr().err


_BENCH = """name = "threads"
[grid]
datasets = ["digits"]
models = ["vae"]
guides = ["mean_field"]
objectives = ["trace_elbo"]
[training]
epochs = 1
"""


@pytest.mark.parametrize("line, ok", [
    ("threads = 1", True), ("compile = true", True), ('compile = "reduce-overhead"', True),
    ("threads = 0", False), ('threads = "2"', False), ('compile = "fastest"', False),
])
def test_bench_configs_take_threads_and_compile(tmp_path, line, ok):
    path = tmp_path / "c.toml"
    path.write_text(_BENCH + line + "\n")
    if ok:
        load_config(path)
    else:
        with pytest.raises(pg.ConfigError, match=f"'{line.split()[0]}' must be"):
            load_config(path)

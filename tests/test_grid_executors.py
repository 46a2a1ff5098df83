"""Benchmark grids across processes: cells as idempotent units of work with their own result files,
run by local worker processes, a Dask LocalCluster and submitit's local executor; a worker killed
mid-cell and two `genmod bench` processes on one grid.

This file is also a script: ``python tests/test_grid_executors.py bench ...`` runs ``genmod`` with
a hook on each cell (worker processes spawned by it import this file too, so they get it): with
``GRID_TEST_LOG`` set, every cell run appends ``start``/``end`` lines (with the pid) to that file;
``GRID_TEST_HOLD`` (``first``, or text in a cell id) holds the cell after it is computed, before its
result is written, until the file ``GRID_TEST_GO`` exists.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _install_hook() -> None:
    log = os.environ.get("GRID_TEST_LOG")
    if not log:
        return
    from pyro_genmod.bench import executor

    real, hold, go, count = executor.run_cell, os.environ.get("GRID_TEST_HOLD"), os.environ.get("GRID_TEST_GO"), []

    def logged(cell, config, data, folder, progress=True):
        _append(log, f"start {os.getpid()} {cell.id}")
        row = real(cell, config, data, folder, progress)
        count.append(cell.id)
        if hold and ((hold == "first" and len(count) == 1) or (hold != "first" and hold in cell.id)):
            _append(log, f"held {os.getpid()} {cell.id}")
            while not os.path.exists(go):
                time.sleep(0.01)
        _append(log, f"end {os.getpid()} {cell.id}")
        return row

    executor.run_cell = logged


_install_hook()  # at import: in the script and in the worker processes it spawns

if __name__ == "__main__":
    from pyro_genmod.cli import main

    sys.exit(main(sys.argv[1:]))

import pytest

from pyro_genmod.bench import COLUMNS, load_config, run_bench
from pyro_genmod.cli import main

CONFIG = """
name = "grid"
results_dir = "{root}/results"
runs_dir = "{root}/runs"
[grid]
datasets = ["digits"]
models = ["vae"]
guides = ["mean_field"]
objectives = ["trace_elbo", "iwae:2"]
seeds = [0, 1, 2, 3]
[training]
epochs = 1
batch_size = 512
[evaluation]
num_samples = 100
max_points = 60
khat_points = 30
eval_block = 30
probe_points = 200
kl_samples = 2
[models.vae]
latent_dim = 2
hidden = [8]
[guides.mean_field]
hidden = [8]
"""
CELLS = 8
TIMINGS = {"train_seconds", "eval_seconds"}
PROVENANCE = {"machine", "code"}  # the process that ran the cell: its threads, and which copy of the package
# it imported (a worker started in a checkout imports that one, with its git commit), which differ by executor


def write_config(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "grid.toml"
    path.write_text(CONFIG.format(root=root.as_posix()))
    return path


def read_csv(root: Path) -> list[dict]:
    with open(root / "results" / "grid.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def results(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "runs").glob("*/result.json")}


def assert_same_table(rows: list[dict], reference: list[dict]) -> None:
    """Same cells in the same order, every column equal but the timings and the machine (floats to 1e-6)."""
    assert [r["cell"] for r in rows] == [r["cell"] for r in reference]
    for row, ref in zip(rows, reference):
        assert row["status"] == "ok", row
        for column in set(COLUMNS) - TIMINGS - PROVENANCE:
            a, b = row[column], ref[column]
            try:
                assert math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9), (row["cell"], column, a, b)
            except ValueError:
                assert a == b, (row["cell"], column, a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid run sequentially in this process (today's behaviour): the table the others must match."""
    root = tmp_path_factory.mktemp("sequential")
    rows = run_bench(write_config(root), progress=False)
    assert len(rows) == CELLS and all(r["status"] == "ok" for r in rows)
    assert {r["worker"].rpartition(":")[2] for r in results(root).values()} == {str(os.getpid())}
    assert len({r["test_nll"] for r in rows}) == CELLS  # the seeds and objectives do differ
    assert all(math.isfinite(float(r["khat_mean"])) for r in rows)  # k-hat is compared too
    return rows


def _workers(root: Path) -> set[str]:
    return {r["worker"] for r in results(root).values()}


def test_local_worker_processes_give_the_sequential_table(tmp_path, reference):
    rows = run_bench(write_config(tmp_path), executor="local", jobs=2, progress=False)
    assert_same_table(rows, reference)
    assert_same_table(read_csv(tmp_path), reference)
    workers = _workers(tmp_path)
    assert 1 <= len(workers) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers), workers
    # the table is built from the cells' files: --collect alone rebuilds it, running nothing
    (tmp_path / "results" / "grid.csv").unlink()
    (tmp_path / "results" / "grid.md").unlink()
    assert main(["bench", str(write_config(tmp_path)), "--collect", "--executor", "dask"]) == 0
    assert_same_table(read_csv(tmp_path), reference)
    assert (tmp_path / "results" / "grid.md").read_text().count("| ok |") == CELLS
    assert _workers(tmp_path) == workers


def test_a_dask_local_cluster_gives_the_sequential_table(tmp_path, reference):
    import distributed  # noqa: F401  (a test extra: CI installs it, so a missing one fails here)
    rows = run_bench(write_config(tmp_path), executor="dask", jobs=2, progress=False)
    assert_same_table(rows, reference)
    workers = _workers(tmp_path)
    assert 1 <= len(workers) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers), workers


@pytest.mark.slow
def test_a_dask_scheduler_address_is_used(tmp_path, reference, capsys):
    import distributed  # a test extra
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        argv = ["bench", str(write_config(tmp_path)), "--executor", "dask", "--scheduler", cluster.scheduler_address]
        assert main([*argv, "--quiet"]) == 0, capsys.readouterr()
        with distributed.Client(cluster) as client:
            pids = set(client.run(os.getpid).values())
    assert {worker.rpartition(":")[2] for worker in _workers(tmp_path)} == {str(pid) for pid in pids}
    assert_same_table(read_csv(tmp_path), reference)


def test_submitit_local_executor_gives_the_sequential_table(tmp_path, reference, capsys):
    import submitit  # noqa: F401  (a test extra)
    config = write_config(tmp_path)
    code = main(["bench", str(config), "--executor", "slurm", "--slurm-local", "--jobs", "2", "--quiet"])
    assert code == 0, capsys.readouterr()
    assert f"{CELLS} cells ok, 0 failed" in capsys.readouterr().out
    assert_same_table(read_csv(tmp_path), reference)
    workers = _workers(tmp_path)
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers), workers
    assert (tmp_path / "runs" / ".submitit").is_dir()  # submitit's job files and logs


@pytest.mark.parametrize("extra, module", [("dask", "distributed"), ("slurm", "submitit")])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    assert main(["bench", str(write_config(tmp_path)), "--executor", extra, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f'pip install "pyro-genmod[{extra}]"' in err, err
    assert results(tmp_path) == {}


def _env(log: Path, **extra) -> dict:
    env = {**os.environ, "GRID_TEST_LOG": str(log), **{k: str(v) for k, v in extra.items()}}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _genmod(config: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE), "bench", str(config), "--quiet", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def _log(log: Path) -> list[tuple[str, int, str]]:
    if not log.is_file():
        return []
    return [(kind, int(pid), cell) for kind, pid, cell in (line.split() for line in log.read_text().splitlines())]


def _wait_for(condition, processes, what: str, timeout: float = 600):
    """Poll an observable state (files other processes write) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"a process ended while waiting for {what}: {process.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_worker_killed_mid_cell_loses_and_duplicates_nothing(tmp_path, reference):
    config, log, go = write_config(tmp_path), tmp_path / "log", tmp_path / "go"
    held_cell = "digits/vae/mean_field/trace_elbo-k1/seed3"
    held_folder = tmp_path / "runs" / held_cell.replace("/", "__")
    parent = _genmod(config, "--jobs", "2", env=_env(log, GRID_TEST_HOLD="trace_elbo-k1/seed3", GRID_TEST_GO=go))
    try:
        # the worker holding that cell has trained and scored it but not yet written its result
        _wait_for(lambda: any(k == "held" for k, _, _ in _log(log)) and len(results(tmp_path)) == CELLS - 1,
                  [parent], "the other cells and the held one")
        [(_, worker, cell)] = [entry for entry in _log(log) if entry[0] == "held"]
        assert cell == held_cell and worker != parent.pid
        os.kill(worker, signal.SIGKILL)
        out, err = parent.communicate(timeout=300)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 1, (out, err)
    assert "run the same command again" in err and f"{CELLS - 1} cells ok, 0 failed; 1 without a result" in out
    assert held_cell not in results(tmp_path) and (held_folder / "config.json").is_file()  # trained, no result
    assert (held_folder / ".genmod-lock").read_text().split() == [str(worker)]  # a stale lock, taken over below
    assert [r["cell"] for r in read_csv(tmp_path)] == [r["cell"] for r in reference if r["cell"] != held_cell]

    before = len(_log(log))
    again = _genmod(config, "--jobs", "2", env=_env(log))
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, (out, err)
    assert f"{CELLS} cells ok, 0 failed" in out
    rerun = _log(log)[before:]
    assert [(kind, cell) for kind, _, cell in rerun] == [("start", held_cell), ("end", held_cell)]  # only it, once
    assert_same_table(read_csv(tmp_path), reference)  # the resumed cell as if never interrupted
    assert len(results(tmp_path)) == CELLS
    assert not any((tmp_path / "runs").glob("*/.genmod-lock"))  # every lock released
    assert not [p for p in (tmp_path / "runs").rglob(".result.json.*")]  # no temporaries left
    assert not [p for p in (tmp_path / "runs").rglob(".points-*.npz.*")]  # nor half-written evaluation blocks


def test_two_bench_processes_on_one_grid_share_it(tmp_path, reference):
    config, log, go = write_config(tmp_path), tmp_path / "log", tmp_path / "go"
    env = _env(log, GRID_TEST_HOLD="first", GRID_TEST_GO=go)
    first, second = _genmod(config, env=env), _genmod(config, env=env)
    try:
        # each holds its first cell: without the cell locks both would hold the grid's first cell
        _wait_for(lambda: sum(k == "held" for k, _, _ in _log(log)) == 2, [first, second], "both to hold a cell")
        go.touch()
        outputs = [p.communicate(timeout=600) for p in (first, second)]
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [first.returncode, second.returncode] == [0, 0], outputs
    for out, _ in outputs:
        assert f"{CELLS} cells ok, 0 failed" in out  # each ends with the whole table
    entries = _log(log)
    held = [cell for kind, _, cell in entries if kind == "held"]
    assert len(set(held)) == 2
    started = [cell for kind, _, cell in entries if kind == "start"]
    assert sorted(started) == sorted(r["cell"] for r in reference)  # every cell run exactly once
    assert {pid for kind, pid, _ in entries} == {first.pid, second.pid}  # both did work
    assert_same_table(read_csv(tmp_path), reference)


FAILING = """
name = "failing"
results_dir = "{root}/results"
runs_dir = "{root}/runs"
[grid]
datasets = ["digits"]
models = ["no_such_model"]
guides = ["mean_field"]
objectives = ["trace_elbo", "iwae:2"]
"""


def test_retry_failed_reruns_a_failed_cell_once_even_from_two_processes(tmp_path):
    from pyro_genmod.bench import run_cells
    from pyro_genmod.bench.executor import pending_cells

    path = tmp_path / "failing.toml"
    path.write_text(FAILING.format(root=tmp_path.as_posix()))
    config = load_config(path)
    rows = run_bench(config, progress=False)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    first = {cell: r["attempt"] for cell, r in results(tmp_path).items()}
    assert run_bench(config, progress=False) == rows  # recorded failures are not run again
    assert {cell: r["attempt"] for cell, r in results(tmp_path).items()} == first
    # two processes planning a retry from the same failed results: the first reruns the cell, the
    # second finds another result than the one it planned to retry and leaves it
    pending, retry = pending_cells(config, retry_failed=True)
    assert len(pending) == 2 and set(retry.values()) == set(first.values())
    assert [r["outcome"] for r in run_cells(config, pending, retry)] == ["failed", "failed"]
    again = {cell: r["attempt"] for cell, r in results(tmp_path).items()}
    assert set(again.values()).isdisjoint(first.values())
    assert [r["outcome"] for r in run_cells(config, pending, retry)] == ["skipped", "skipped"]
    assert {cell: r["attempt"] for cell, r in results(tmp_path).items()} == again
    run_bench(config, progress=False, retry_failed=True)
    assert set(r["attempt"] for r in results(tmp_path).values()).isdisjoint(again.values())


def test_a_csv_from_before_result_files_keeps_its_rows(tmp_path):
    from pyro_genmod.bench import collect

    path = tmp_path / "failing.toml"
    path.write_text(FAILING.format(root=tmp_path.as_posix()))
    config = load_config(path)
    cell = config.cells()[0]
    (tmp_path / "results").mkdir()
    header = ",".join(COLUMNS)
    row = {column: "" for column in COLUMNS} | {
        "cell": cell.id, "status": "ok", "dataset": "digits", "model": "no_such_model", "guide": "mean_field",
        "objective": "trace_elbo", "k": "1", "seed": "0", "test_nll": "91.5",
    }
    (tmp_path / "results" / "failing.csv").write_text(header + "\n" + ",".join(row[c] for c in COLUMNS) + "\n")
    # the old grid trained that cell in this runs folder: its parameters are there (a row without
    # them, from another runs folder, is never taken: tests/test_bench.py)
    config.cell_folder(cell).mkdir(parents=True)
    (config.cell_folder(cell) / "params.safetensors").write_bytes(b"")
    rows = collect(config)
    assert [(r["cell"], r["status"], r["test_nll"]) for r in rows] == [(cell.id, "ok", "91.5")]
    assert results(tmp_path)[cell.slug]["test_nll"] == "91.5"  # now a result file: the cell stays done
    rows = run_bench(config, progress=False)  # the other cell runs (and fails); the old row stays
    assert [r["status"] for r in rows] == ["ok", "failed"]
    # once moved, the CSV is only an output: a result file deleted means the cell runs again
    (tmp_path / "runs" / cell.slug / "result.json").unlink()
    assert [r["status"] for r in run_bench(config, progress=False)] == ["failed", "failed"]


def test_progress_counts_cells_done_running_and_failed(tmp_path):
    from pyro_genmod.bench.executors import _Progress
    from pyro_genmod.bench.report import write_result
    from pyro_genmod.folders import FolderLock

    config = load_config(write_config(tmp_path))
    cells = config.cells()
    progress = _Progress(config, [cell.id for cell in cells], enabled=False)
    assert progress.counts() == (0, 0, 0)
    for cell in cells[:3]:
        config.cell_folder(cell).mkdir(parents=True)
    write_result(config.cell_folder(cells[0]), {"cell": cells[0].id, "status": "ok"})
    write_result(config.cell_folder(cells[1]), {"cell": cells[1].id, "status": "failed", "error": "x"})
    with FolderLock(config.cell_folder(cells[2]), "bench cell"):
        assert progress.counts() == (1, 1, 1)
    assert progress.counts() == (1, 0, 1)
    progress.close()

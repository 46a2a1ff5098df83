"""Where the cells of a grid run: worker processes here, a Dask cluster, or a Slurm job array.

Every executor runs the same unit of work, :func:`~pyro_genmod.bench.executor.run_cells`, which
claims a cell by locking its run folder and writes its result file before letting go; so the
executors only differ in where that function runs. Progress (cells done, running, failed) is
read from the runs folder itself, so it counts the work of every worker and every process.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from pyro_genmod.errors import ConfigError
from pyro_genmod.folders import FolderLock

from .config import EXECUTORS, BenchConfig
from .executor import run_cells
from .report import read_result

__all__ = ["dispatch"]

_POLL = 0.5  # seconds between looks at the runs folder while workers run


def _missing(extra: str, what: str) -> ConfigError:
    return ConfigError(f"the {extra} executor needs {what}, which is not installed: pip install \"pyro-genmod[{extra}]\"")


class _Progress:
    """A bar over the pending cells: done, running (locked by any worker) and failed."""

    def __init__(self, config: BenchConfig, cell_ids: list[str], enabled: bool):
        cells = {cell.id: cell for cell in config.cells()}
        self.folders = {cell_id: config.cell_folder(cells[cell_id]) for cell_id in cell_ids}
        self.seen: dict[str, str] = {}
        self.bar = tqdm(total=len(cell_ids), unit="cell", disable=None if enabled else True)

    def counts(self, attempts: dict[str, str | None] | None = None) -> tuple[int, int, int]:
        """Cells (done, running, failed): results written since the start, locks held now."""
        running = 0
        for cell_id, folder in self.folders.items():
            if cell_id in self.seen:
                continue
            result = read_result(folder)
            if result is not None and (attempts is None or result.get("attempt") != attempts.get(cell_id)):
                self.seen[cell_id] = result.get("status", "failed")
                if self.seen[cell_id] != "ok":
                    tqdm.write(f"cell {cell_id} failed: {result.get('error')}")
                self.bar.update(1)
            elif FolderLock.holder(folder) is not None:
                running += 1
        failed = sum(status != "ok" for status in self.seen.values())
        return len(self.seen) - failed, running, failed

    def update(self, attempts: dict[str, str | None] | None = None) -> None:
        done, running, failed = self.counts(attempts)
        self.bar.set_postfix_str(f"done {done}, running {running}, failed {failed}", refresh=True)

    def close(self) -> None:
        self.bar.close()


def _wait(futures: list, progress: _Progress, retry: dict) -> None:
    while not all(future.done() for future in futures):
        progress.update(retry)
        time.sleep(_POLL)
    progress.update(retry)


def _results(futures: list, cell_groups: list[list[str]]) -> tuple[list[dict], list[str]]:
    reports, problems = [], []
    for future, group in zip(futures, cell_groups):
        try:
            reports += future.result()
        except Exception as error:  # a lost worker: its cells stay without a result
            message = " ".join(str(error).split())[:300] or type(error).__name__
            problems += [f"{cell_id}: {type(error).__name__}: {message}" for cell_id in group]
    return reports, problems


def _local(config, groups, retry, jobs, data_root, progress, bar):
    if jobs == 1:  # today's sequential grid, in this process
        reports = []
        for group in groups:
            reports += run_cells(config, group, retry, data_root, progress)
            bar.update(retry)
        return reports, []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_cells, config, group, retry, data_root, False) for group in groups]
        _wait(futures, bar, retry)
        return _results(futures, groups)


def _dask(config, groups, retry, jobs, scheduler, data_root, bar):
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        raise _missing("dask", "Dask's distributed scheduler") from None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    client = Client(cluster if cluster is not None else scheduler)
    try:
        futures = [
            client.submit(run_cells, config, group, retry, data_root, False, pure=False,
                          key=f"genmod-bench-{group[0]}-{uuid.uuid4().hex}")
            for group in groups
        ]
        _wait(futures, bar, retry)
        return _results(futures, groups)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _slurm(config, cell_ids, retry, jobs, local, folder, data_root, bar):
    try:
        import submitit
    except ImportError:
        raise _missing("slurm", "submitit") from None
    folder = Path(folder) if folder is not None else config.runs_folder() / ".submitit"
    parameters = dict(config.raw.get("slurm", {}))
    if local:
        executor = submitit.LocalExecutor(folder=folder)
        parameters = {key: value for key, value in parameters.items() if key in ("timeout_min",)}
    else:
        executor = submitit.AutoExecutor(folder=folder)
    # --jobs tasks, each working through its share of the cells; by default one task per cell
    tasks = min(jobs, len(cell_ids)) if jobs else len(cell_ids)
    groups = [cell_ids[i::tasks] for i in range(tasks)]
    executor.update_parameters(**parameters)
    submitted = executor.map_array(
        run_cells, [config] * tasks, groups, [retry] * tasks, [data_root] * tasks, [False] * tasks,
    )
    _wait(submitted, bar, retry)
    return _results(submitted, groups)


def dispatch(
    kind: str, config: BenchConfig, cell_ids: list[str], retry: dict, *, jobs: int | None,
    scheduler: str | None, slurm_local: bool, slurm_folder, data_root, progress: bool,
) -> list[str]:
    """Run ``cell_ids`` on the executor ``kind``; return a line for each cell a lost worker left
    without a result. Cells another process holds are waited for, and taken over if that
    process dies before it writes their result."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor '{kind}'; choose one of {list(EXECUTORS)}")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"--jobs must be a positive integer, not {jobs!r}")
    data_root = str(data_root) if data_root is not None else None
    bar = _Progress(config, cell_ids, progress)
    problems: list[str] = []
    try:
        todo = list(cell_ids)
        while todo:
            if kind == "local":
                reports, lost = _local(config, [[c] for c in todo], retry, jobs or 1, data_root, progress, bar)
            elif kind == "dask":
                reports, lost = _dask(config, [[c] for c in todo], retry, jobs or 1, scheduler, data_root, bar)
            else:
                reports, lost = _slurm(config, todo, retry, jobs, slurm_local, slurm_folder, data_root, bar)
            problems += lost
            busy = [report["cell"] for report in reports if report["outcome"] == "busy"]
            if lost or not busy:
                break
            todo = _wait_for_others(config, busy, bar, retry)
        bar.update(retry)
    finally:
        bar.close()
    return problems


def _wait_for_others(config: BenchConfig, busy: list[str], bar: _Progress, retry: dict) -> list[str]:
    """Wait while other processes hold cells; return those left without a result (their holder
    died), to run here."""
    cells = {cell.id: cell for cell in config.cells()}
    folders = {cell_id: config.cell_folder(cells[cell_id]) for cell_id in busy}
    while any(FolderLock.holder(folder) is not None for folder in folders.values()):
        bar.update(retry)
        time.sleep(_POLL)
    left = []
    for cell_id, folder in folders.items():
        result = read_result(folder)
        if result is None or (cell_id in retry and result.get("attempt") == retry[cell_id]):
            left.append(cell_id)
    return left

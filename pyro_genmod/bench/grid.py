"""Running a benchmark grid: its pending cells dispatched to an executor, then collected."""

from __future__ import annotations

from pathlib import Path

from pyro_genmod.errors import GenmodError

from .config import BenchConfig, load_config
from .executor import check_trained_settings, pending_cells
from .executors import dispatch
from .report import collect

__all__ = ["run_bench", "GridIncomplete"]


class GridIncomplete(GenmodError):
    """Cells were left without a result because workers were lost; run the grid again to finish."""

    def __init__(self, problems: list[str], rows: list[dict]):
        super().__init__(
            f"{len(problems)} {'cell has' if len(problems) == 1 else 'cells have'} no result because their "
            f"worker was lost ({problems[0]}); "
            f"run the same command again to finish them"
        )
        self.problems, self.rows = problems, rows


def run_bench(
    config: str | Path | BenchConfig, *, results_dir: str | Path | None = None,
    runs_dir: str | Path | None = None, retry_failed: bool = False, progress: bool = True, only: str | None = None,
    data_root: str | Path | None = None, executor: str | None = None, jobs: int | None = None,
    scheduler: str | None = None, slurm_local: bool = False, slurm_folder: str | Path | None = None,
) -> list[dict]:
    """Run every cell of a benchmark grid that has no result yet, collect, and return all rows as
    saved (strings).

    Each cell trains into its run folder ``RUNS/<cell>/`` (``runs_dir`` here, else the config's
    ``runs_dir``, by default ``runs/NAME``; two configs naming the same ``runs_dir`` share
    trained runs) and writes its
    row to ``RUNS/<cell>/result.json``; :func:`~pyro_genmod.bench.report.collect` then builds
    ``RESULTS/NAME.csv`` and ``RESULTS/NAME.md``. A cell is an idempotent unit of work: it is
    locked while it runs, so workers (and separate ``genmod bench`` processes) never run one
    twice; a killed worker's cell is run again on the next run, and a cell whose training
    finished is only scored. A cell trained with other settings than the config now gives is
    refused (:class:`~pyro_genmod.bench.settings.StaleCellsError`, before anything runs); one
    scored with other ``[evaluation]`` settings is scored again, its previous result kept
    beside it. A cell that raises is recorded as ``failed`` with its error and the
    grid carries on; ``retry_failed`` runs such cells again. ``only`` keeps the cells whose id
    contains it. ``data_root`` is the folder of downloaded datasets (the ``root`` option of every
    dataset that takes one; otherwise ``$GENMOD_DATA_ROOT``), so configs hold no machine's paths.

    ``executor``: ``"local"`` (``jobs`` worker processes here; 1 runs the cells in this process),
    ``"dask"`` (a Dask cluster at ``scheduler``, or a ``LocalCluster`` of ``jobs`` workers) or
    ``"slurm"`` (a submitit job array of ``jobs`` tasks, one per cell by default; ``slurm_local``
    runs it with submitit's local executor). Defaults come from the config's ``executor``,
    ``jobs``, ``scheduler`` and ``[slurm]`` (submitit parameters).
    """
    config = config if isinstance(config, BenchConfig) else load_config(config)
    config = BenchConfig(path=Path(config.path).resolve(), raw=config.raw)
    if runs_dir is not None:
        config = config.with_runs_dir(runs_dir)
    executor = executor or config.raw.get("executor", "local")
    jobs = jobs or config.raw.get("jobs")
    scheduler = scheduler or config.raw.get("scheduler")
    check_trained_settings(config, only)  # an edited config never reports another setting's runs
    collect(config, results_dir)  # moves an old grid's CSV rows into result files
    pending, retry = pending_cells(config, retry_failed, only)
    problems = dispatch(
        executor, config, pending, retry, jobs=jobs, scheduler=scheduler, slurm_local=slurm_local,
        slurm_folder=slurm_folder, data_root=data_root, progress=progress,
    )
    rows = collect(config, results_dir)
    if problems:
        raise GridIncomplete(problems, rows)
    return rows

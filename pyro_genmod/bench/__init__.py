"""Benchmark grids: datasets x models x guides x objectives x seeds from TOML, resumable, to CSV and Markdown.

A config (see ``benchmarks/configs/``)::

    name = "digits-smoke"
    [grid]
    datasets = ["digits"]
    models = ["vae"]
    guides = ["mean_field"]
    objectives = ["trace_elbo", "iwae:5"]    # "NAME:k" trains with k particles
    seeds = [0]
    [training]      # passed to pyro_genmod.fit: epochs, batch_size, lr, early_stopping, device
    [evaluation]    # num_samples (IS K), seed, max_points, khat_points, eval_block, probe_points,
                    # kl_samples
    [datasets.digits]   # options per dataset; [models.vae] and [guides.mean_field] likewise
    [[overrides]]   # match = {objective = "iwae:50"}, then training/evaluation options
    [[published]]   # dataset, model, objective, nll, budget, source: shown beside our rows
    executor = "local"  # or "dask" / "slurm"; jobs = 4; scheduler = "tcp://host:8786"
    [slurm]         # submitit parameters for the slurm executor: slurm_partition, timeout_min, ...

Each cell writes ``RUNS/<cell>/result.json`` under a lock on its run folder, and ``collect``
builds the CSV and Markdown tables from those files, so cells can run in any number of
processes, on any machines sharing the runs folder, and be killed and rerun at any moment.
"""

from .config import BenchConfig, Cell, load_config
from .executor import run_cell, run_cells
from .grid import GridIncomplete, run_bench
from .metrics import active_units, blockwise_log_likelihood, kl_per_dimension, linear_probe_accuracy
from .report import COLUMNS, collect, markdown_table

__all__ = [
    "Cell", "BenchConfig", "load_config", "run_bench", "run_cell", "run_cells", "collect", "markdown_table",
    "blockwise_log_likelihood", "active_units", "kl_per_dimension", "linear_probe_accuracy", "COLUMNS",
    "GridIncomplete",
]

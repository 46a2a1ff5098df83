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
"""

from .config import BenchConfig, Cell, load_config
from .executor import run_bench, run_cell
from .metrics import active_units, blockwise_log_likelihood, kl_per_dimension, linear_probe_accuracy
from .report import COLUMNS, markdown_table

__all__ = [
    "Cell", "BenchConfig", "load_config", "run_bench", "run_cell", "markdown_table", "blockwise_log_likelihood",
    "active_units", "kl_per_dimension", "linear_probe_accuracy", "COLUMNS",
]

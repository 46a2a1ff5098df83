"""Benchmark configs: the TOML grid, validated, as cells (dataset x model x guide x objective x seed)."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pyro_genmod.errors import ConfigError

__all__ = ["Cell", "BenchConfig", "load_config"]

_TOP_KEYS = {"name", "title", "notes", "results_dir", "runs_dir", "grid", "training", "evaluation",
             "datasets", "models", "guides", "overrides", "published", "executor", "jobs", "scheduler", "slurm",
             "logger", "log_every"}
EXECUTORS = ("local", "dask", "slurm")
_EVAL_DEFAULTS = {
    "num_samples": 1000, "seed": 0, "max_points": None, "khat_points": None, "eval_block": 500,
    "probe_points": 10000, "kl_samples": 16,
    # scoring methods: IS always (its k-hat says where AIS matters), AIS beside it when listed
    "methods": ["is"], "ais_steps": 100, "ais_chains": 16, "ais_leapfrog": 5, "ais_step_size": 0.05,
    "ais_points": None,
}
_AIS_INTS = ("ais_steps", "ais_chains", "ais_leapfrog", "ais_points")


def _check_methods(evaluation: dict, where: str) -> None:
    """The scoring-method keys of an ``[evaluation]`` table (or an override's), checked before any
    cell runs."""
    methods = evaluation.get("methods", ["is"])
    if methods not in (["is"], ["is", "ais"]):
        raise ConfigError(
            f"{where}: methods = {methods!r}; write methods = [\"is\"] or [\"is\", \"ais\"] (importance "
            f"sampling is always scored; AIS is added beside it)"
        )
    for key in _AIS_INTS:
        value = evaluation.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    size = evaluation.get("ais_step_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int | float) or not size > 0
                             or size == float("inf")):
        raise ConfigError(f"{where}: ais_step_size must be a positive number, got {size!r}")


@dataclass(frozen=True)
class Cell:
    """One point of the grid; ``objective`` is the spec as written (``"iwae:5"``), ``k`` its particles."""

    dataset: str
    model: str
    guide: str
    objective: str
    seed: int

    @property
    def objective_name(self) -> str:
        return self.objective.partition(":")[0]

    @property
    def k(self) -> int:
        _, sep, k = self.objective.partition(":")
        return int(k) if sep else 1

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.model}/{self.guide}/{self.objective_name}-k{self.k}/seed{self.seed}"

    @property
    def slug(self) -> str:
        """The name of the cell's run folder under the grid's runs folder."""
        return self.id.replace("/", "__")


@dataclass
class BenchConfig:
    """A parsed benchmark config; ``path`` is where it was read from."""

    path: Path
    raw: dict

    @property
    def name(self) -> str:
        return self.raw["name"]

    def cells(self) -> list[Cell]:
        grid = self.raw["grid"]
        return [
            Cell(*combo)
            for combo in itertools.product(
                grid["datasets"], grid["models"], grid["guides"], grid["objectives"], grid.get("seeds", [0])
            )
        ]

    def options(self, cell: Cell, section: str) -> dict:
        """``training`` or ``evaluation`` options for ``cell``, with matching overrides applied."""
        merged = dict(_EVAL_DEFAULTS) if section == "evaluation" else {}
        merged.update(self.raw.get(section, {}))
        for override in self.raw.get("overrides", []):
            match = override.get("match", {})
            if all(str(getattr(cell, key, None)) == str(value) for key, value in match.items()):
                merged.update(override.get(section, {}))
        return merged

    def published(self, cell: Cell) -> dict:
        for entry in self.raw.get("published", []):
            keys = ("dataset", "model", "objective_name", "k")
            wanted = {**entry, "objective_name": entry.get("objective", cell.objective_name)}
            if all(wanted.get(key, getattr(cell, key)) == getattr(cell, key) for key in keys):
                return entry
        return {}

    def runs_folder(self) -> Path:
        return self.folder("runs_dir", f"runs/{self.name}")

    def with_runs_dir(self, runs_dir: str | Path) -> BenchConfig:
        """This grid with its run folders under ``runs_dir`` (``genmod bench --runs-dir``)."""
        return BenchConfig(path=self.path, raw={**self.raw, "runs_dir": str(Path(runs_dir).expanduser().resolve())})

    def cell_folder(self, cell: Cell) -> Path:
        """The cell's run folder: its trained run, its evaluation blocks, its ``result.json``."""
        return self.runs_folder() / cell.slug

    def folder(self, key: str, default: str) -> Path:
        """Results or runs folder: relative paths are taken from the folder above ``configs/``."""
        base = self.path.parent.parent if self.path.parent.name == "configs" else self.path.parent
        value = Path(self.raw.get(key, default))
        return value if value.is_absolute() else base / value


# --- the whole config's shape, checked before the first cell ------------------------------------
# Each section names its keys and what each value must be; a new key is one entry here.


def _string(value) -> bool:
    return isinstance(value, str) and bool(value)


def _integer(low: int):
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list_of(check):
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _seed(value) -> bool:
    return _integer(0)(value) and value <= 2**32 - 1  # pyro.set_rng_seed's range


_GRID = {
    "datasets": (_list_of(_string), "a list of dataset names"),
    "models": (_list_of(_string), "a list of model names"),
    "guides": (_list_of(_string), "a list of guide names"),
    "objectives": (_list_of(_string), "a list of objective names, NAME or NAME:k"),
    "seeds": (_list_of(_seed), "a list of integer seeds in [0, 2**32 - 1]"),
}
_EVALUATION_TYPES = {
    "num_samples": (_integer(1), "a positive integer"), "seed": (_seed, "an integer seed in [0, 2**32 - 1]"),
    "max_points": (_integer(1), "a positive integer"), "khat_points": (_integer(0), "a non-negative integer"),
    "eval_block": (_integer(1), "a positive integer"), "probe_points": (_integer(1), "a positive integer"),
    "kl_samples": (_integer(1), "a positive integer"),
}
_PUBLISHED = {
    "dataset": (_string, "a dataset name"), "model": (_string, "a model name"),
    "objective": (_string, "an objective name"), "k": (_integer(1), "a positive integer"),
    "nll": (_number, "a number (nats)"), "budget": (_string, "text"), "source": (_string, "text"),
}
_MATCH = {"dataset": (_string, "a name"), "model": (_string, "a name"), "guide": (_string, "a name"),
          "objective": (_string, "a name"), "seed": (_seed, "an integer seed")}
_TABLES = ("training", "evaluation", "datasets", "models", "guides", "slurm")


def _check_table(table, spec: dict, where: str, open_keys: bool = False) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__} {table!r}")
    for key, value in table.items():
        if key not in spec:
            if open_keys:
                continue
            raise ConfigError(f"{where} has an unknown key '{key}'; its keys are {sorted(spec)}")
        check, what = spec[key]
        if not check(value):
            raise ConfigError(f"{where}: '{key}' must be {what}, got {value!r}")


def _training_spec() -> dict:
    """What ``[training]`` may hold: the keyword options of :func:`pyro_genmod.fit` (new ones are
    taken up as fit grows), each of the type of its default where that is a bool, int, float or str."""
    import inspect

    from pyro_genmod.compiled import COMPILE_MODES
    from pyro_genmod.train import fit

    spec = {}
    for name, parameter in inspect.signature(fit).parameters.items():
        if name in ("model", "guide", "data", "progress", "callbacks", "checkpoint", "resume", "distributed", "device"):
            continue
        default = parameter.default
        if name == "compile":  # true, false or a mode by name
            spec[name] = (lambda v: isinstance(v, bool) or v in COMPILE_MODES, f"true, false or one of {COMPILE_MODES}")
        elif name == "threads":  # default None: the idle CPUs
            spec[name] = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer")
        elif isinstance(default, bool):
            spec[name] = (lambda v: isinstance(v, bool), "true or false")
        elif isinstance(default, int):
            spec[name] = (_seed, "an integer seed in [0, 2**32 - 1]") if name == "seed" else (_integer(-(2**63)), "an integer")
        elif isinstance(default, float):
            spec[name] = (_number, "a number")
        else:
            spec[name] = (lambda v: True, "")
    return spec


def check_types(raw: dict, where: str) -> None:
    """Check the shape of a whole benchmark config: every table a table, the keys of ``[grid]``,
    ``[training]``, ``[evaluation]``, ``[[overrides]]`` and ``[[published]]`` known and their values
    of the right type, so a mistake is reported before the first cell runs rather than by it."""
    for key in _TABLES:
        if key in raw and not isinstance(raw[key], dict):
            raise ConfigError(f"{where}: [{key}] must be a table, got {type(raw[key]).__name__} {raw[key]!r}")
    for key in ("datasets", "models", "guides"):
        for name, options in raw.get(key, {}).items():
            if not isinstance(options, dict):
                raise ConfigError(f"{where}: [{key}.{name}] must be a table of options, got {options!r}")
    _check_table(raw.get("grid", {}), _GRID, f"{where}: [grid]")
    _check_table(raw.get("training", {}), _training_spec(), f"{where}: [training]")
    _check_table(raw.get("evaluation", {}), _EVALUATION_TYPES, f"{where}: [evaluation]", open_keys=True)
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list):
        raise ConfigError(f"{where}: overrides must be an array of tables ([[overrides]]), got {overrides!r}")
    for i, override in enumerate(overrides):
        section = {"match": (lambda v: isinstance(v, dict), "a table"),
                   "training": (lambda v: isinstance(v, dict), "a table"),
                   "evaluation": (lambda v: isinstance(v, dict), "a table")}
        _check_table(override, section, f"{where}: [[overrides]] number {i + 1}")
        _check_table(override.get("match", {}), _MATCH, f"{where}: [[overrides]] number {i + 1}, match")
        _check_table(override.get("training", {}), _training_spec(), f"{where}: [[overrides]] number {i + 1}, training")
        _check_table(override.get("evaluation", {}), _EVALUATION_TYPES,
                     f"{where}: [[overrides]] number {i + 1}, evaluation", open_keys=True)
    published = raw.get("published", [])
    if not isinstance(published, list):
        raise ConfigError(f"{where}: published must be an array of tables ([[published]]), got {published!r}")
    for i, entry in enumerate(published):
        _check_table(entry, _PUBLISHED, f"{where}: [[published]] number {i + 1}")


def load_config(path: str | Path) -> BenchConfig:
    """Read and check a benchmark TOML file; a problem raises :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read benchmark config '{path}': {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"benchmark config '{path}' is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"benchmark config '{path}' is not valid TOML: {error}") from None
    check_types(raw, f"benchmark config '{path}'")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"benchmark config '{path}' has unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    if not isinstance(raw.get("name"), str) or not raw["name"].replace("-", "").replace("_", "").isalnum():
        raise ConfigError(
            f"benchmark config '{path}' needs a name of letters, digits, '-' and '_' (it names the "
            f"result files)"
        )
    grid = raw.get("grid", {})
    for key in ("datasets", "models", "guides", "objectives"):
        if not isinstance(grid.get(key), list) or not grid[key]:
            raise ConfigError(f"benchmark config '{path}': [grid] needs a non-empty list '{key}'")
    for spec in grid["objectives"]:
        name, sep, k = str(spec).partition(":")
        if sep and not (k.isdigit() and int(k) > 0):
            raise ConfigError(
                f"objective '{spec}' in '{path}': write NAME or NAME:k with k a positive integer"
            )
    for key in set(raw.get("evaluation", {})) - set(_EVAL_DEFAULTS):
        raise ConfigError(
            f"[evaluation] in '{path}' has no option '{key}'; its options are {sorted(_EVAL_DEFAULTS)}"
        )
    _check_methods(raw.get("evaluation", {}), f"[evaluation] in '{path}'")
    for override in raw.get("overrides", []):
        _check_methods(override.get("evaluation", {}), f"an override's [evaluation] in '{path}'")
    executor = raw.get("executor", "local")
    if executor not in EXECUTORS:
        raise ConfigError(f"benchmark config '{path}': executor '{executor}' is not one of {list(EXECUTORS)}")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"benchmark config '{path}': jobs must be a positive integer, not {jobs!r}")
    if not isinstance(raw.get("slurm", {}), dict):
        raise ConfigError(f"benchmark config '{path}': [slurm] must be a table of submitit parameters")
    from pyro_genmod.tracking import check_logger_names

    check_logger_names(raw.get("logger"), f"benchmark config '{path}'")  # names known, extras installed
    every = raw.get("log_every", 50)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"benchmark config '{path}': log_every must be a positive integer (steps), not {every!r}")
    return BenchConfig(path=path.resolve(), raw=raw)



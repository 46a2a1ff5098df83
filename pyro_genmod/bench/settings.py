"""Whether a cell's trained run and its result still match the config that asks for them.

A grid is resumable: a rerun reloads each cell's trained pair and keeps its result. That is only
right while the config says what the run was made with. Editing a config after a run (more epochs,
another latent size, a larger IS K, AIS added) must not report the old numbers under the new
settings, so before any cell runs:

* a changed **training** setting (the model's, guide's or dataset's options, or ``[training]``)
  is refused with :class:`StaleCellsError` naming the cells and the settings: the trained runs stay
  as they are, and the user picks a new runs folder or removes the cells' folders to retrain;
* a changed **evaluation** setting (``[evaluation]``: IS K, points, AIS, ...) re-scores the
  trained run with the new settings; the previous result is kept beside it, never overwritten.

Each result records the evaluation settings it was scored with (``"evaluation"``); results written
before that are compared on the columns they have (IS K and the AIS columns).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from pyro_genmod.errors import ConfigError, GenmodError

from .config import BenchConfig, Cell

__all__ = ["StaleCellsError", "evaluation_changes", "evaluation_settings", "training_changes"]

# fit options the cell itself fixes (its folder is per cell) or that do not change what is learned
_CELL_KEYS = {"objective", "num_particles", "seed", "world_size", "progress", "device", "threads",
              "checkpoint", "resume", "callbacks", "compile"}
_DATA_PATH_KEYS = {"root"}  # where the files are, not what they hold
_MISSING = object()


class StaleCellsError(ConfigError):
    """Cells of the grid were trained with other settings than the config now gives."""

    def __init__(self, runs_folder: Path, stale: dict[str, list[str]]):
        first, changes = next(iter(stale.items()))
        more = f" (and {len(stale) - 1} more {'cell' if len(stale) == 2 else 'cells'})" if len(stale) > 1 else ""
        super().__init__(
            f"cell {first}{more} in runs folder '{runs_folder}' was trained with other settings than the "
            f"config now gives: {'; '.join(changes)}; its run and result are kept as they are: give the "
            f"edited config its own runs folder (--runs-dir DIR) or remove those cells' folders to retrain them"
        )
        self.stale = stale


def _plain(value):
    """A setting as JSON would hold it, so that TOML's, fit's and a saved file's values compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _default(obj, key: str):
    """``key``'s declared default in ``obj``'s signature (``_MISSING`` when it declares none)."""
    try:
        parameter = inspect.signature(obj).parameters.get(key)
    except (TypeError, ValueError):
        return _MISSING
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _MISSING
    return parameter.default


def _show(value) -> str:
    return "unset" if value is _MISSING else json.dumps(value, default=str)


def _compare(section: str, wanted: dict, saved: dict, default_of, keys) -> list[str]:
    changes = []
    for key in sorted(keys):
        now = wanted.get(key, _MISSING)
        then = saved.get(key, _MISSING)
        now = default_of(key) if now is _MISSING else now
        then = default_of(key) if then is _MISSING else then
        if now is _MISSING and then is _MISSING:
            continue
        now, then = (v if v is _MISSING else _plain(v) for v in (now, then))
        if now != then:
            changes.append(f"{section} {key} was {_show(then)}, the config now says {_show(now)}")
    return changes


def _declared_default(kind: str, name: str):
    from pyro_genmod._registry import _declared_parameters, _lookup

    try:
        declared, _ = _declared_parameters(_lookup({}, kind, name), skip=1 if kind != "dataset" else 0)
    except (GenmodError, TypeError, ValueError):  # a user's program or an unknown name: no declared defaults to fall back on
        declared = {}

    def default(key: str):
        parameter = declared.get(key)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return _MISSING
        return parameter.default

    return default


def training_changes(config: BenchConfig, cell: Cell, folder: Path) -> list[str]:
    """How the trained run in ``folder`` differs from what the config asks of ``cell`` (empty when
    it matches, or when nothing is trained there yet): the options of the model, guide and dataset
    the config sets, and every ``[training]`` option (with fit's defaults for those not written)."""
    try:
        saved = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return []  # a damaged run folder is reported by loading it
    from pyro_genmod.train import fit

    raw = config.raw
    changes = []
    for kind, name, section in (("model", cell.model, "models"), ("guide", cell.guide, "guides"),
                                ("dataset", cell.dataset, "datasets")):
        wanted = {k: v for k, v in raw.get(section, {}).get(name, {}).items() if k not in _DATA_PATH_KEYS}
        recorded = (saved.get(kind) or {}).get("options") or {}
        changes += _compare(kind, wanted, recorded, _declared_default(kind, name), wanted)
    wanted = {k: v for k, v in config.options(cell, "training").items() if k not in _CELL_KEYS}
    recorded = {k: v for k, v in (saved.get("training") or {}).items() if k not in _CELL_KEYS}
    changes += _compare("training", wanted, recorded, lambda key: _default(fit, key), set(wanted) | set(recorded))
    return changes


def evaluation_settings(config: BenchConfig, cell: Cell) -> dict:
    """The ``[evaluation]`` settings a result of ``cell`` is scored with (recorded in the result)."""
    return _plain(config.options(cell, "evaluation"))


def evaluation_changes(config: BenchConfig, cell: Cell, row: dict) -> list[str]:
    """How the settings ``row`` was scored with differ from the config's ``[evaluation]`` for ``cell``."""
    wanted = evaluation_settings(config, cell)
    recorded = row.get("evaluation")
    if isinstance(recorded, dict):
        return _compare("evaluation", wanted, recorded, lambda key: _MISSING, set(wanted) | set(recorded))
    # a result from before the settings were recorded: compare the columns it has
    changes = []
    if row.get("eval_K") not in (None, "") and int(float(row["eval_K"])) != wanted["num_samples"]:
        changes.append(f"evaluation num_samples was {int(float(row['eval_K']))}, the config now says "
                       f"{wanted['num_samples']}")
    has_ais = row.get("ais_nll") not in (None, "")
    if has_ais != ("ais" in wanted["methods"]):
        changes.append(f"evaluation methods {'listed' if has_ais else 'did not list'} AIS, the config now "
                       f"{'does not' if has_ais else 'does'}")
    elif has_ais:
        for key in ("ais_steps", "ais_chains", "ais_leapfrog", "ais_points"):
            then, now = row.get(key), wanted[key]
            if now is not None and then not in (None, "") and int(float(then)) != now:
                changes.append(f"evaluation {key} was {int(float(then))}, the config now says {now}")
    return changes

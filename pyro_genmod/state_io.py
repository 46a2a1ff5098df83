"""Module and optimizer state to and from named tensors, for files that hold no pickles.

The checkpoints (:mod:`pyro_genmod.checkpoint`), the run folders (:mod:`pyro_genmod.runs`) and
objectives with learned state (FactorVAE's discriminator) store parameters and optimizer state as
safetensors plus JSON; these are the conversions they share.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import RunFolderError

__all__ = ["load_optimizer_tensors", "load_state", "optimizer_tensors"]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """An optimizer's state as tensors named ``N.key`` (parameter index, state name: ``0.exp_avg``)
    and the rest as JSON: ``{"param_groups": [...], "scalars": {"N.key": value}}``."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], saved: dict) -> None:
    """The inverse of :func:`optimizer_tensors`: load ``tensors`` and ``saved`` into ``optimizer``."""
    state: dict[int, dict] = {}
    for values in (tensors, saved["scalars"]):
        for name, value in values.items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_state(
    module, state: dict[str, Tensor], where: str,
    fix: str = "the options in the run's config.json do not build the module it saved",
) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch raises :class:`RunFolderError`
    in one line naming the first parameter that differs and both shapes (torch's own message
    puts them on later lines), or the first missing or unexpected name."""
    expected = module.state_dict()
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]

    def more(found: list) -> str:
        return f" (and {len(found) - 1} more)" if len(found) > 1 else ""

    if shapes:
        k = shapes[0]
        problem = (f"parameter '{k}' has shape {tuple(state[k].shape)} in the file but {tuple(expected[k].shape)} "
                   f"in the rebuilt {type(module).__name__}{more(shapes)}")
    elif missing:
        problem = f"parameter '{missing[0]}' of the rebuilt {type(module).__name__} is not in the file{more(missing)}"
    elif unexpected:
        problem = f"the file holds parameter '{unexpected[0]}', which the rebuilt {type(module).__name__} has not{more(unexpected)}"
    else:
        module.load_state_dict(state, strict=True)
        return
    raise RunFolderError(f"{where}: {problem}; {fix}")

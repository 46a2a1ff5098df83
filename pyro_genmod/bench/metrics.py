"""What a benchmark measures beyond the IS NLL: active units, KL per dimension, a linear probe,
the K=5000 protocol in resumable blocks, and AIS beside IS."""

from __future__ import annotations

import math
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_genmod.ais import AISLogLikelihood
from pyro_genmod.densities import latent_log_ratios
from pyro_genmod.errors import ConfigError, DataError
from pyro_genmod.folders import atomic_savez
from pyro_genmod.importance import LogLikelihood, log_likelihood
from pyro_genmod.seeding import seeded

__all__ = ["active_units", "ais_columns", "block_path", "block_saved", "blockwise_log_likelihood", "kl_per_dimension", "linear_probe_accuracy"]


def active_units(means: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al.'s active units: dimensions u with Cov_x(E_q[u | x]) above ``threshold``.

    References:
        | Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015) https://arxiv.org/abs/1509.00519

    Arguments:
        means: posterior means E_q[z | x], shape ``(N, D)``.
        threshold: variance over the data above which a unit counts as active.
    """
    return int((means.var(dim=0, unbiased=True) > threshold).sum())


def kl_per_dimension(
    model, guide, x: torch.Tensor, num_samples: int = 16, chunk: int = 1000, seed: int = 0
) -> float:
    """Monte Carlo KL(q(z|x) || p(z)) averaged over the points of ``x``, divided by the latent dimension.

    Works for any pair, including hierarchical priors: the log-density engine replays the model
    on guide draws (:func:`~pyro_genmod.densities.latent_log_ratios`), summed over the model's
    latent sites.
    """
    names = {site.name for site in model.latent_sites}
    dims = sum(math.prod(site.event_shape) or 1 for site in model.latent_sites)
    total = 0.0
    with seeded(seed):
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk]
            ratios = latent_log_ratios(model, guide, part, num_samples)
            kl = sum(ratio for name, ratio in ratios.items() if name in names)
            total += float(kl.mean(0).sum())
    return total / x.shape[0] / dims


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, seed: int = 0) -> float:
    """Test accuracy of a logistic regression fitted on standardized training features.

    A representation-quality score for q(z|x): how linearly separable the classes are in the
    posterior means. Non-finite features (a guide whose encoding is undefined) raise a
    :class:`DataError` naming them, not scikit-learn's error from inside the fit.
    """
    for name, features in (("train_features", train_features), ("test_features", test_features)):
        bad = ~torch.isfinite(torch.as_tensor(features))
        if bad.any():
            columns = int(bad.reshape(bad.shape[0], -1).any(0).sum())
            raise DataError(
                f"linear probe: {name} has {int(bad.sum())} non-finite values in {columns} columns; "
                "the guide's encoding (pg.encode) is not defined for them"
            )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    probe.fit(train_features.numpy(), train_labels.numpy())
    return float(probe.score(test_features.numpy(), test_labels.numpy()))


def _read_block(path: Path, keys: tuple[str, ...]) -> dict | None:
    """The arrays of a saved evaluation block, or ``None`` (with a warning) when the file is
    missing or cannot be read whole: truncated, corrupted, or without one of ``keys``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {key: saved[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"evaluation block '{path}' is unreadable ({error}); scoring it again", RuntimeWarning, stacklevel=3)
        return None


def block_path(folder: Path, start: int, stop: int) -> Path:
    """Where :func:`blockwise_log_likelihood` saves the scores of points ``start:stop``."""
    return folder / f"points-{start:06d}-{stop:06d}.npz"


def block_saved(folder: Path, start: int, stop: int, method: str = "is") -> bool:
    """Whether :func:`blockwise_log_likelihood` has saved the scores of points ``start:stop`` whole;
    a file it cannot read (truncated, corrupted) counts as not saved, and is scored again."""
    return _read_block(block_path(folder, start, stop), _block_keys(method)) is not None


def _block_keys(method: str) -> tuple[str, ...]:
    """The arrays a saved block holds: the estimate's, and with AIS each point's Monte Carlo error and acceptance."""
    return ("per_point", "elbo", "khat", "seconds", *(("mc_stderr", "acceptance") if method == "ais" else ()))


def blockwise_log_likelihood(
    model, proposal, x: torch.Tensor, num_samples: int, *, seed: int, block: int,
    khat_points: int | None, folder: Path, method: str = "is", blocks=None, **ais_options,
) -> tuple[LogLikelihood, float]:
    """:func:`log_likelihood` of ``x`` in blocks of ``block`` points, each saved to ``folder`` when
    done, so a long evaluation (K=5000 on 10,000 images) can run in parts and resume.

    Block ``i`` is drawn with seed ``seed + i``; PSIS k-hat is fitted only on the blocks that
    start before ``khat_points`` (``None``: all), as it costs ~40% more than the estimate.
    ``method="ais"`` scores with AIS instead (``num_samples`` chains per point, ``ais_options``
    such as ``num_steps``); its blocks also keep each point's Monte Carlo standard error and
    acceptance rate. ``blocks`` (indices, e.g. ``[9]``) scores only those blocks, so several
    processes can share one evaluation. Returns the estimate and the seconds spent on the blocks
    (including earlier parts).
    """
    if not isinstance(block, int) or block < 1:
        raise ConfigError(f"eval_block must be a positive integer, got {block!r}")
    folder.mkdir(parents=True, exist_ok=True)
    keys = _block_keys(method)
    parts, seconds = [], 0.0
    for i, start in enumerate(range(0, x.shape[0], block)):
        if blocks is not None and i not in blocks:
            continue
        stop = min(start + block, x.shape[0])
        path = block_path(folder, start, stop)
        saved = _read_block(path, keys)
        if saved is None:  # not scored yet, or cut short (a crash, a full disk): score it again
            began = time.perf_counter()
            with_khat = khat_points is None or start < khat_points
            ll = log_likelihood(model, proposal, x[start:stop], num_samples, seed=seed + i, khat=with_khat,
                                method=method, **ais_options)
            arrays = {"per_point": ll.per_point.numpy(), "elbo": ll.elbo.numpy(), "khat": ll.khat,
                      "seconds": np.array(time.perf_counter() - began)}
            arrays.update({key: getattr(ll, key).numpy() for key in keys if key not in arrays})  # AIS: its extras
            atomic_savez(path, arrays, what="evaluation block")
            saved = arrays
        parts.append({key: saved[key] for key in keys if key != "seconds"})
        seconds += float(saved["seconds"])
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    common = {"per_point": torch.from_numpy(joined["per_point"]), "elbo": torch.from_numpy(joined["elbo"]),
              "khat": joined["khat"], "num_samples": num_samples}
    if method == "ais":
        ll = AISLogLikelihood(**common, mc_stderr=torch.from_numpy(joined["mc_stderr"]),
                              acceptance=torch.from_numpy(joined["acceptance"]),
                              num_steps=ais_options.get("num_steps", 100),
                              leapfrog_steps=ais_options.get("leapfrog_steps", 5))
    else:
        ll = LogLikelihood(**common)
    return ll, seconds


def ais_columns(model, proposal, x: torch.Tensor, is_estimate: LogLikelihood, opts: dict, folder: Path) -> dict:
    """The AIS columns of a bench row when ``opts["methods"]`` lists ``"ais"`` (else none): AIS NLL
    and its standard error over points on the first ``ais_points`` scored points, the mean Monte
    Carlo standard error across chains, the settings, the wall time, and how many nats IS misses
    on the same points (IS NLL - AIS NLL), overall and where IS k-hat is above 0.7."""
    if "ais" not in opts["methods"]:
        return {}
    points = min(opts["ais_points"] or x.shape[0], x.shape[0])
    steps, chains, leapfrog, size = opts["ais_steps"], opts["ais_chains"], opts["ais_leapfrog"], opts["ais_step_size"]
    ais, seconds = blockwise_log_likelihood(
        model, proposal, x[:points], chains, seed=opts["seed"], block=opts["eval_block"], khat_points=0,
        folder=folder / f"eval-ais-T{steps}-K{chains}-L{leapfrog}-eps{size:g}-seed{opts['seed']}-block{opts['eval_block']}",
        method="ais", num_steps=steps, leapfrog_steps=leapfrog, step_size=size,
    )
    missed = (ais.per_point - is_estimate.per_point[:points]).double()
    unreliable = torch.from_numpy(np.asarray(is_estimate.khat[:points]) > 0.7)
    return {
        "ais_nll": -ais.mean, "ais_nll_stderr": ais.stderr, "ais_mc_stderr": float(ais.mc_stderr.mean()),
        "ais_steps": steps, "ais_chains": chains, "ais_leapfrog": leapfrog, "ais_points": points,
        "ais_seconds": seconds, "ais_acceptance": float(ais.acceptance.mean()),
        "is_minus_ais_nll": float(missed.mean()),
        "is_minus_ais_nll_khat_above_0.7": float(missed[unreliable].mean()) if bool(unreliable.any()) else None,
    }

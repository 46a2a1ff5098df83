"""The dataset contract: train, validation and test tensors, binarization, and the loader by name.

Each dataset (or family of datasets) is one file in this folder whose loader registers itself
with ``@register_dataset("name")``; :func:`load_dataset` finds it by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pyro_genmod._registry import load_registered_dataset
from pyro_genmod.errors import DataError

__all__ = ["Dataset", "load_dataset", "BINARIZATIONS", "require_files", "train_test_dataset"]

BINARIZATIONS = ("dynamic", "none")


@dataclass
class Dataset:
    """Train, validation and test tensors of shape ``(N, *shape)`` with values as floats.

    With ``binarization="dynamic"`` (Burda et al. 2015), ``train`` holds intensities in [0, 1]
    and every training batch is redrawn as Bernoulli pixels by :meth:`training_batch`;
    ``val`` and ``test`` were binarized once with a fixed seed. With ``"none"`` the tensors are
    used as they are.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    binarization: str = "none"
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.binarization not in BINARIZATIONS:
            raise DataError(
                f"unknown binarization '{self.binarization}'; choose one of {BINARIZATIONS}"
            )
        for split in ("train", "val", "test"):
            tensor = getattr(self, split)
            if tensor.ndim < 2 or tensor.shape[0] == 0:
                raise DataError(
                    f"dataset '{self.name}': the {split} split is empty or has no feature "
                    f"dimension (shape {tuple(tensor.shape)}); each split needs shape (N, ...)"
                )
            bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
            if bad.any():
                row = int(bad.nonzero()[0])
                raise DataError(
                    f"dataset '{self.name}': the {split} split has NaN or inf values, first in "
                    f"row {row}; clean or drop those rows"
                )
        shapes = {tuple(getattr(self, s).shape[1:]) for s in ("train", "val", "test")}
        if len(shapes) != 1:
            raise DataError(f"dataset '{self.name}': splits have different shapes {shapes}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Event shape of one data point, for example ``(1, 8, 8)``."""
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def training_batch(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The batch as the model sees it: redrawn Bernoulli pixels under dynamic binarization.

        A pixel of intensity p is 1 when a uniform draw u in [0, 1) is below p, which is
        Bernoulli(p): ``rand < p`` costs about a third of ``torch.bernoulli`` on a 128 x 784 batch
        (one uniform per pixel, one comparison), and draws a different stream from it."""
        if self.binarization == "dynamic":
            u = torch.rand(batch.shape, generator=generator, device=batch.device, dtype=batch.dtype)
            return (u < batch).to(batch.dtype)
        return batch


def binarize_once(x: Tensor, seed: int) -> Tensor:
    """One fixed Bernoulli draw of intensities in [0, 1] (for validation and test sets)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


def split_and_binarize(
    name: str,
    x: Tensor,
    labels: Tensor | None,
    *,
    num_val: int,
    num_test: int,
    binarize: bool,
    seed: int,
    options: dict,
) -> Dataset:
    """Split ``x`` with a fixed permutation into train/val/test and apply the binarization mode."""
    permutation = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x = x[permutation]
    labels = labels[permutation] if labels is not None else None
    num_train = x.shape[0] - num_val - num_test
    parts = torch.split(x, [num_train, num_val, num_test])
    label_parts = torch.split(labels, [num_train, num_val, num_test]) if labels is not None else (None,) * 3
    train, val, test = parts
    if binarize:
        val, test = binarize_once(val, seed + 1), binarize_once(test, seed + 2)
    return Dataset(
        name=name,
        train=train.contiguous(),
        val=val.contiguous(),
        test=test.contiguous(),
        binarization="dynamic" if binarize else "none",
        train_labels=label_parts[0],
        val_labels=label_parts[1],
        test_labels=label_parts[2],
        options=options,
    )


def require_files(name: str, folder: str | Path, files: list[str], how: str) -> Path:
    """Check that ``folder`` holds ``files``; otherwise raise one :class:`DataError` saying
    which folder was searched, which files are expected and ``how`` to get them."""
    folder = Path(folder)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        which = "" if len(missing) == len(files) else f" (missing {', '.join(missing)})"
        raise DataError(
            f"dataset '{name}' not found: expected {', '.join(files)} in '{folder}'{which}; {how}"
        )
    return folder


def train_test_dataset(
    name: str,
    train: Tensor,
    train_labels: Tensor | None,
    test: Tensor,
    test_labels: Tensor | None,
    *,
    num_val: int,
    binarize: bool,
    seed: int,
    options: dict,
) -> Dataset:
    """A dataset from an official train/test split: the last ``num_val`` points of a fixed
    permutation of ``train`` become the validation set; the test set is kept whole and, with
    ``binarize``, drawn once as Bernoulli pixels with a fixed seed (Burda et al. 2015)."""
    if not isinstance(num_val, int) or not 0 < num_val < train.shape[0]:
        raise DataError(
            f"dataset '{name}': num_val must be an integer between 1 and {train.shape[0] - 1}, "
            f"got {num_val!r}"
        )
    permutation = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = permutation[:-num_val], permutation[-num_val:]
    val = train[val_idx]
    if binarize:
        val, test = binarize_once(val, seed + 1), binarize_once(test, seed + 2)
    return Dataset(
        name=name,
        train=train[train_idx].contiguous(),
        val=val.contiguous(),
        test=test.contiguous(),
        binarization="dynamic" if binarize else "none",
        train_labels=train_labels[train_idx] if train_labels is not None else None,
        val_labels=train_labels[val_idx] if train_labels is not None else None,
        test_labels=test_labels,
        options=options,
    )


def load_dataset(name: str = "digits", **kwargs) -> Dataset:
    """Load a registered dataset by name; ``digits`` needs no download.

    Example:
        >>> import pyro_genmod as pg
        >>> data = pg.load_dataset("digits")
        >>> data.shape, data.train.shape[0], data.binarization
        ((1, 8, 8), 1297, 'dynamic')
    """
    return load_registered_dataset(name, **kwargs)

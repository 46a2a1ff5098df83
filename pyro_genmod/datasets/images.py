"""Image datasets: MNIST, Fashion-MNIST, KMNIST and CIFAR-10 through torchvision; Larochelle's binarized MNIST."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_genmod._registry import register_dataset
from pyro_genmod.errors import DataError

from .base import Dataset, require_files, train_test_dataset

__all__ = ["DATA_ROOT_ENV", "data_root", "mnist", "fashion_mnist", "kmnist", "cifar10", "binarized_mnist", "BINARIZED_MNIST_URL"]

#: Environment variable naming the folder of downloaded datasets when no ``root`` is given.
DATA_ROOT_ENV = "GENMOD_DATA_ROOT"
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_DOWNLOAD_HINT = "or pass download=True (CLI: --data-opt download=true) to fetch them"


def data_root(root: str | os.PathLike | None) -> str:
    """``root`` if given, else ``$GENMOD_DATA_ROOT``, else ``data`` (relative to the working folder)."""
    return str(root) if root is not None else os.environ.get(DATA_ROOT_ENV) or "data"


def _idx_split(name: str, class_name: str, root: str | os.PathLike, download: bool, train: bool):
    """One split of an MNIST-layout torchvision dataset, as ``(images, labels)`` tensors."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    if not download:
        files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        require_files(
            name, Path(root) / class_name / "raw", files,
            f"download the .gz files from {cls.mirrors[0]} and gunzip them there, {_DOWNLOAD_HINT}",
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints each failed mirror
            split = cls(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as error:
        if download:
            raise _download_failed(
                name, error, Path(root) / class_name / "raw", f"the .gz files from {cls.mirrors[0]}, gunzipped,"
            ) from None
        raise DataError(f"dataset '{name}': torchvision could not read '{root}': {_first_line(error)}") from None
    return split.data, split.targets


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines and lines[0].endswith(":") else (lines[0] if lines else type(error).__name__)


def _download_failed(name: str, error: BaseException, folder: Path, what: str) -> DataError:
    """One line for a failed download: why (the last reason torchvision gives), and where to put
    the files by hand (the ``--data-root`` layout)."""
    return DataError(
        f"dataset '{name}': the download failed ({_first_line(error)}); without network, put {what} in "
        f"'{folder}' (the layout under --data-root) and run again without download=true"
    )


def _mnist_like(
    name: str, class_name: str, root, download: bool, binarize: bool, num_val: int, seed: int
) -> Dataset:
    root = data_root(root)
    (train, train_y), (test, test_y) = (
        _idx_split(name, class_name, root, download, train=flag) for flag in (True, False)
    )
    to_float = lambda images: images.to(torch.float32).div_(255.0).unsqueeze(1)  # noqa: E731
    return train_test_dataset(
        name, to_float(train), train_y.long(), to_float(test), test_y.long(),
        num_val=num_val, binarize=binarize, seed=seed,
        options={"root": str(root), "binarize": binarize, "num_val": num_val, "seed": seed},
    )


@register_dataset("mnist")
def mnist(
    root: str | os.PathLike | None = None, download: bool = False, binarize: bool = True,
    num_val: int = 10000, seed: int = 0,
) -> Dataset:
    """MNIST handwritten digits, 28x28, read by torchvision from ``ROOT/MNIST/raw``.

    With ``binarize`` (default) training pixels are redrawn as Bernoulli draws for every batch
    and the validation and test sets are binarized once with a fixed seed (dynamic
    binarization, Burda et al.'s protocol); otherwise intensities in [0, 1] are kept.
    The 10,000 official test images are the test set; ``num_val`` training images, chosen by a
    permutation seeded with ``seed``, are held out for validation.

    References:
        | Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015) https://arxiv.org/abs/1509.00519

    Arguments:
        root: folder holding ``MNIST/raw/`` (torchvision's layout); default ``$GENMOD_DATA_ROOT``,
            else ``data``.
        download: fetch the files with torchvision if they are missing.
        binarize: dynamic binarization (True) or grey levels in [0, 1] (False).
        num_val: training images held out for validation.
        seed: seeds the validation split and the fixed test binarization.
    """
    return _mnist_like("mnist", "MNIST", root, download, binarize, num_val, seed)


@register_dataset("fashion_mnist")
def fashion_mnist(
    root: str | os.PathLike | None = None, download: bool = False, binarize: bool = True,
    num_val: int = 10000, seed: int = 0,
) -> Dataset:
    """Fashion-MNIST clothing images, 28x28, read by torchvision from ``ROOT/FashionMNIST/raw``.

    Options as for :func:`mnist`.
    """
    return _mnist_like("fashion_mnist", "FashionMNIST", root, download, binarize, num_val, seed)


@register_dataset("kmnist")
def kmnist(
    root: str | os.PathLike | None = None, download: bool = False, binarize: bool = True,
    num_val: int = 10000, seed: int = 0,
) -> Dataset:
    """Kuzushiji-MNIST cursive Japanese characters, 28x28, from ``ROOT/KMNIST/raw``.

    Options as for :func:`mnist`.
    """
    return _mnist_like("kmnist", "KMNIST", root, download, binarize, num_val, seed)


@register_dataset("cifar10")
def cifar10(
    root: str | os.PathLike | None = None, download: bool = False, binarize: bool = False,
    num_val: int = 5000, seed: int = 0,
) -> Dataset:
    """CIFAR-10 colour images, 3x32x32 in [0, 1], read by torchvision from ``ROOT/cifar-10-batches-py``.

    Arguments:
        root: folder holding ``cifar-10-batches-py/`` (the extracted python archive); default
            ``$GENMOD_DATA_ROOT``, else ``data``.
        download: fetch and extract the archive with torchvision if it is missing.
        binarize: dynamic binarization; off by default (use a Gaussian likelihood).
        num_val: training images held out for validation.
        seed: seeds the validation split and any test binarization.
    """
    import torchvision.datasets as tvd

    root = data_root(root)
    if not download:
        files = [f for f, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list] + ["batches.meta"]
        require_files(
            "cifar10", Path(root) / tvd.CIFAR10.base_folder, files,
            f"download {tvd.CIFAR10.url} and extract it into '{root}', {_DOWNLOAD_HINT}",
        )
    splits = []
    for train in (True, False):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                split = tvd.CIFAR10(root=str(root), train=train, download=download)
        except (RuntimeError, OSError) as error:
            if download:
                raise _download_failed(
                    "cifar10", error, Path(root), f"{tvd.CIFAR10.url}, extracted (it holds {tvd.CIFAR10.base_folder}/)"
                ) from None
            raise DataError(f"dataset 'cifar10': torchvision could not read '{root}': {_first_line(error)}") from None
        images = torch.as_tensor(split.data).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        splits.append((images, torch.as_tensor(split.targets, dtype=torch.long)))
    (train, train_y), (test, test_y) = splits
    return train_test_dataset(
        "cifar10", train, train_y, test, test_y, num_val=num_val, binarize=binarize, seed=seed,
        options={"root": str(root), "binarize": binarize, "num_val": num_val, "seed": seed},
    )


def _read_amat(path: Path) -> Tensor:
    """A ``.amat`` file (one image per line, 784 space-separated 0/1 values) as ``(N, 1, 28, 28)``."""
    values = np.array(path.read_bytes().split(), dtype=np.float32)
    if values.size % 784:
        raise DataError(f"'{path}' does not hold rows of 784 pixels ({values.size} values); download it again")
    return torch.from_numpy(values).reshape(-1, 1, 28, 28)


@register_dataset("binarized_mnist")
def binarized_mnist(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Larochelle's statically binarized MNIST (50,000 / 10,000 / 10,000), from ``ROOT/BinarizedMNIST``.

    The pixels were binarized once, so ``binarization`` is ``"none"``; this set overfits more
    than dynamically binarized MNIST and its numbers are not comparable with Burda's Table 1.

    References:
        | The Neural Autoregressive Distribution Estimator (Larochelle & Murray, 2011) https://proceedings.mlr.press/v15/larochelle11a.html

    Arguments:
        root: folder holding ``BinarizedMNIST/binarized_mnist_{train,valid,test}.amat``; default
            ``$GENMOD_DATA_ROOT``, else ``data``.
        download: fetch the three files from the Toronto URL if they are missing.
    """
    root = data_root(root)
    folder = Path(root) / "BinarizedMNIST"
    files = [f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test")]
    if download:
        from torchvision.datasets.utils import download_url

        for f in files:
            if not (folder / f).is_file():
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        download_url(BINARIZED_MNIST_URL + f, str(folder), f)
                except (RuntimeError, OSError) as error:
                    raise _download_failed("binarized_mnist", error, folder, f"{', '.join(files)} from {BINARIZED_MNIST_URL}") from None
    require_files(
        "binarized_mnist", folder, files, f"download them from {BINARIZED_MNIST_URL}, {_DOWNLOAD_HINT}"
    )
    train, val, test = (_read_amat(folder / f) for f in files)
    return Dataset(
        name="binarized_mnist", train=train, val=val, test=test, binarization="none",
        options={"root": str(root)},
    )

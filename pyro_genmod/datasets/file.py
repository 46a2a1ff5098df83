"""Your own data from a file: a ``.npy``, ``.npz`` or ``.csv`` array with one row per point.

``genmod train --dataset file --data-opt path=points.csv`` trains on it. Files are read
without unpickling (``allow_pickle=False``), and every problem is reported with the row of the
file it is in, before anything is trained or written.

The dataset's options record the file's absolute path and the SHA-256 of its content, so a run
(``evaluate``, ``--resume``, ``load_run``) reloads exactly the data it was trained on: a file
edited or replaced since is refused unless ``allow_changed=True``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_genmod._registry import register_dataset
from pyro_genmod.errors import ConfigError, DataError

from .base import Dataset, split_and_binarize

__all__ = ["array_file", "read_array", "file_sha256"]

_SUFFIXES = (".npy", ".npz", ".csv")


def _check_npy_header(handle, available: int, where: str) -> None:
    """Read the ``.npy`` header at ``handle`` (numpy's own format reader) and refuse, before any
    array is allocated, a dtype that holds Python objects or a shape whose bytes the file does
    not hold (a header claiming 10**9 rows in a small file)."""
    try:
        version = np.lib.format.read_magic(handle)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(handle)
    except ValueError as error:
        raise DataError(f"cannot read data file {where}: {str(error).splitlines()[0]}") from None
    if dtype.hasobject:
        raise DataError(
            f"cannot read data file {where}: it holds Python objects, which would need unpickling; save a numeric array"
        )
    need = math.prod(shape) * dtype.itemsize
    have = available - handle.tell()
    if need > have:
        raise DataError(
            f"data file {where} is truncated or its header is wrong: the header claims shape {shape} of "
            f"{dtype} ({need:,} bytes) but the file holds {max(have, 0):,} bytes of data; write it again with numpy.save"
        )


def _check_stored_sizes(path: Path) -> None:
    """:func:`_check_npy_header` for a ``.npy`` file, or the array ``x`` of an ``.npz``."""
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as handle:
            _check_npy_header(handle, path.stat().st_size, f"'{path}'")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            if "x.npy" not in archive.namelist():
                return  # np.load reports what is missing
            with archive.open("x.npy") as handle:
                _check_npy_header(handle, archive.getinfo("x.npy").file_size, f"'{path}' (array 'x')")
    except zipfile.BadZipFile:
        return  # not a zip archive: np.load says what it is (a pickle is refused there)


def _real(x: np.ndarray, path: Path) -> np.ndarray:
    """``x`` as an array of real numbers in native byte order. The rule: booleans, integers and
    floats are kept, big-endian ones converted to native order, and floats wider than 64 bits
    (float128) converted to float64; timedelta, datetime, complex, text and object arrays are
    refused."""
    kind = x.dtype.kind
    if kind not in "biuf":
        what = {"m": "timedelta", "M": "datetime", "c": "complex", "U": "text", "S": "bytes", "O": "object"}
        raise DataError(
            f"data file '{path}' holds {x.dtype} ({what.get(kind, 'non-numeric')}) values; it needs real "
            f"numbers (integers or floats): convert them before saving, e.g. x.astype('float64')"
        )
    if kind == "f" and x.dtype.itemsize > 8:
        with np.errstate(over="ignore"):  # a value beyond float64's range becomes inf: refused below
            return x.astype(np.float64)
    if not x.dtype.isnative:
        return x.astype(x.dtype.newbyteorder("="))
    return x


def read_array(path: str | Path) -> np.ndarray:
    """The 2-D (or higher) array of real numbers in ``path``, in native byte order (see
    :func:`_real` for the dtype rule); ``DataError`` naming the problem if not. A CSV may start
    with a UTF-8 byte-order mark. A ``.npy`` header is checked against the file's size before
    the array is read, so a header claiming more rows than the file holds allocates nothing."""
    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES:
        raise DataError(f"data file '{path}' must end in {', '.join(_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    try:
        if path.suffix.lower() == ".csv":
            with warnings.catch_warnings():  # an empty file is reported below, not warned about
                warnings.simplefilter("ignore", UserWarning)
                x = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, encoding="utf-8-sig")
        else:
            _check_stored_sizes(path)
            x = np.load(path, allow_pickle=False)
            if isinstance(x, np.lib.npyio.NpzFile):
                with x:
                    if "x" not in x.files:
                        raise DataError(f"data file '{path}' has no array named 'x' (it has {', '.join(x.files) or 'none'})")
                    x = x["x"]
    except DataError:
        raise
    except ValueError as error:  # non-numeric CSV cells, object (pickled) arrays, bad headers
        first = str(error).splitlines()[0]
        if "allow_pickle" in first:
            first = "it holds Python objects, which would need unpickling; save a numeric array"
        raise DataError(f"cannot read data file '{path}': {first}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read data file '{path}': {error}") from None
    x = _real(x, path)
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"data file '{path}' is empty or not one row per point (shape {x.shape})")
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(
            f"data file '{path}' has NaN or inf values, first in row {int(bad.argmax())} (counting "
            f"from 0); clean or drop those rows"
        )
    return x


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file's bytes, as hex."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise DataError(f"cannot read data file '{path}': {error.strerror or error}") from None


@register_dataset("file")
def array_file(
    path: str | None = None,
    shape: list[int] | None = None,
    binarize: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    sha256: str | None = None,
    allow_changed: bool = False,
) -> Dataset:
    """Your own data from a ``.npy``, ``.npz`` (array ``x``) or ``.csv`` file, one row per point.

    Arguments:
        path: the file (required).
        shape: the shape of one point, for example ``[1, 28, 28]``; default: as stored.
        binarize: treat the values as intensities in [0, 1] and redraw Bernoulli pixels each
            time a training point is used (validation and test are drawn once).
        val_fraction, test_fraction: shares of the rows held out, after a seeded permutation.
        seed: seeds the split (and the one-off binarization of validation and test).
        sha256: the SHA-256 the file's content must have (a run's config records it); a file
            whose content differs is refused with a :class:`DataError`.
        allow_changed: accept a file whose content no longer has ``sha256`` (the dataset then
            records the new content's hash).

    The options the dataset records hold the absolute path and the content's SHA-256.
    """
    if path is None or path == "":
        raise ConfigError(
            "dataset 'file' needs the path of a .npy, .npz or .csv file: --data-opt path=FILE "
            "(in Python: load_dataset('file', path=...))"
        )
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"dataset 'file': path must be a file name, got {path!r}")
    path = Path(path).expanduser().absolute()
    x = read_array(path)
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256 and not allow_changed:
        raise DataError(
            f"data file '{path}' has changed since this run loaded it (SHA-256 {sha256[:12]}... then, "
            f"{digest[:12]}... now); restore the original file, or pass allow_changed=true "
            f"(--allow-changed-data) to use the new content"
        )
    num = x.shape[0]
    try:
        x = x.reshape(num, *shape) if shape is not None else x
    except (TypeError, ValueError):
        raise DataError(f"rows of '{path}' have {math.prod(x.shape[1:])} values, which do not fit shape {shape}") from None
    if not all(isinstance(f, (int, float)) and 0 <= f < 1 for f in (val_fraction, test_fraction)):
        raise DataError("val_fraction and test_fraction must be numbers in [0, 1)")
    num_val, num_test = max(1, round(num * val_fraction)), max(1, round(num * test_fraction))
    if num - num_val - num_test < 1:
        raise DataError(f"data file '{path}' has {num} rows: too few to keep {num_val} for validation and {num_test} for testing")
    if binarize and bool(((x < 0) | (x > 1)).any()):
        raise DataError(f"binarize=True needs values in [0, 1], but '{path}' has values in [{x.min()}, {x.max()}]")
    tensor = torch.as_tensor(x, dtype=torch.float32)
    options = dict(
        path=str(path), shape=shape, binarize=binarize, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, sha256=digest,
    )
    return split_and_binarize(
        "file", tensor, None, num_val=num_val, num_test=num_test, binarize=binarize, seed=seed, options=options,
    )

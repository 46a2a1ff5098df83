"""Files and folders written safely: atomic writes, one writer per folder, staged replacement.

The layout of a run folder and the machinery that keeps it whole when a writer is killed, the
disk fills up or two writers meet (see :mod:`pyro_genmod.runs` for what a run holds):

* **One writer at a time.** A writer holds an exclusive OS lock (``flock``) on
  ``.genmod-lock`` in the folder, a file that also holds the writer's pid. A second writer is
  refused with that pid. The kernel drops the lock when its process dies, however it dies, so
  a lock file left behind by a killed process is simply taken over. When a writer takes a
  folder it removes the temporary files that killed writes left there.
* **A run replaces another atomically.** A new run in a folder that holds a run (``--overwrite``)
  is trained and saved in the staging folder ``.genmod-new`` inside it; the old run stays
  untouched and loadable meanwhile. To commit, a manifest ``.genmod-new/.genmod-commit`` is
  written (the commit point), the old run's files are replaced one by one with ``os.replace``
  (``config.json`` last) and the staging folder is removed. A kill before the commit point
  leaves the old run intact and the new one resumable (``genmod train --resume``); after it, the
  next writer or reader rolls the commit forward. Files that are not part of a run are kept;
  the old run's ``diagnose/`` folder, which describes the old run, is removed.
* **Every file is written to a temporary name in its folder, synced, and moved into place**
  with ``os.replace``, with the permissions the umask gives (``tempfile.mkstemp`` would give
  0600).

The same lock, and a staging folder ``.genmod-new-output`` committed the same way, protect
``genmod diagnose`` output folders (:func:`take_output_folder`). This module imports nothing
from the package but its errors, so checkpoints, run folders and reports can all use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import RunFolderError

try:  # POSIX; without it (Windows) folders are written without a lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "prepare_run_folder",
    "take_run_folder",
    "take_output_folder",
    "resume_folder",
    "settle",
    "atomic_write",
    "atomic_savez",
    "atomic_write_text",
    "check_output_folder",
    "FolderLock",
    "TakenFolder",
    "FORMAT_VERSION",
    "RUN_FILES",
    "CHECKPOINT_FILE",
]

FORMAT_VERSION = 1
RUN_FILES = ("config.json", "metrics.json", "history.csv", "params.safetensors")
CHECKPOINT_FILE = "checkpoint.safetensors"
LOCK_FILE = ".genmod-lock"
STAGING = ".genmod-new"
OUTPUT_STAGING = ".genmod-new-output"  # take_output_folder's, so an output folder can be a run folder
COMMIT_FILE = ".genmod-commit"
MLFLOW_RUN_FILE = "mlflow-run.json"  # which MLflow run a run folder logs to (pyro_genmod.tracking)
TRACKING_ENTRIES = ("tensorboard", MLFLOW_RUN_FILE)  # a run's logs that belong to it, replaced with it
# what a new run replaces in its folder, and the order its files are moved in (config.json last)
_RUN_REPLACES = (*RUN_FILES, CHECKPOINT_FILE, "diagnose", *TRACKING_ENTRIES)
_RUN_ORDER = (*TRACKING_ENTRIES, CHECKPOINT_FILE, "params.safetensors", "history.csv", "metrics.json", "config.json")
_HASHED = ("params.safetensors", "metrics.json", "history.csv")
_PROBE = ".write-test."
_WAIT_SECONDS = 30.0  # how long a reader waits for a live writer to finish committing
_REREAD_SECONDS = 5.0  # how long a reader that saw a mix re-reads while a writer holds the lock


# --- writing files ----------------------------------------------------------------------------


def _temp_file(folder: Path, prefix: str) -> Path:
    """Create an empty file ``folder/<prefix><random>`` whose permissions follow the umask."""
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(6)}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def _fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder (``write(tmp)``), sync it, then
    ``os.replace`` it into place, so a crash or a full disk never leaves a half-written file
    under ``path``. The file gets the permissions the umask gives."""
    path = Path(path)
    tmp = _temp_file(path.parent, f".{path.name}.")
    try:
        write(str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_bytes(path: str, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], what: str = "file") -> Path:
    """:func:`_atomic_write` for callers outside run folders: ``write(tmp)`` writes the file
    (for example an image) to the temporary path ``tmp``. An ``OSError`` (a full disk, no
    permission) becomes a :class:`RunFolderError` and leaves any old file at ``path`` as it was."""
    path = Path(path)
    try:
        _atomic_write(path, write)
    except OSError as error:
        raise RunFolderError(
            f"cannot write {what} '{path}': {error.strerror or error}; write it to a folder that exists "
            f"and that you can write to"
        ) from None
    return path


def atomic_savez(path: str | os.PathLike, arrays: dict, what: str = "arrays file") -> Path:
    """:func:`atomic_write` of ``numpy.savez(**arrays)`` (read back with ``numpy.load(path,
    allow_pickle=False)``)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would add .npz to the temporary name
            np.savez(handle, **arrays)

    return atomic_write(path, write, what)


def atomic_write_text(path: Path, text: str) -> None:
    payload = text.encode("utf-8")
    _atomic_write(Path(path), lambda tmp: _write_bytes(tmp, payload))


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _is_temporary(name: str) -> bool:
    """A temporary file of an atomic write, or of the write probe, in a run folder."""
    return name.startswith((_PROBE, f".{COMMIT_FILE}.")) or any(
        name.startswith(f".{known}.") for known in (*RUN_FILES, CHECKPOINT_FILE, MLFLOW_RUN_FILE)
    )


def _remove_temporaries(folder: Path) -> None:
    """Remove the temporary files killed writes left in ``folder`` (call with its lock held)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if _is_temporary(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- the folder lock --------------------------------------------------------------------------


class _LockHeld(RunFolderError):
    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


def _read_pid(fd: int) -> int | None:
    """The pid in a lock file; its holder writes it right after locking, so wait a moment."""
    for _ in range(20):
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text:
            try:
                return int(text.split()[0])
            except ValueError:
                return None
        time.sleep(0.025)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """An exclusive ``flock`` on ``folder/.genmod-lock``; the file holds the owner's pid.

    The kernel releases the lock when the owning process exits or is killed, so a lock file
    whose process is gone is not held, and the next writer takes it over. :meth:`release`
    removes the file; :meth:`acquire` checks that the file it locked is still the one at the
    path, so removing it on release cannot let two writers in.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self, patience: float = 0.2) -> FolderLock:
        """Take the lock or raise :class:`RunFolderError` naming the pid that holds it.

        ``patience``: seconds to keep trying while it is held (a reader probing the lock
        holds it for an instant)."""
        deadline = time.monotonic() + patience
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            if fcntl is None:  # pragma: no cover
                self._fd = fd
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    os.close(fd)
                    time.sleep(0.02)
                    continue
                pid = _read_pid(fd)
                os.close(fd)
                who = f"pid {pid}" if pid is not None else "pid unknown"
                if pid is not None and not _alive(pid):
                    who += ", which has exited; a process it started still holds the lock"
                raise _LockHeld(
                    f"{self.what} '{self.folder}' is in use by another genmod process ({who}); wait for it "
                    f"to finish, or stop it, then try again", pid,
                ) from None
            except OSError as error:
                os.close(fd)
                raise RunFolderError(
                    f"cannot lock {self.what} '{self.folder}' ({error.strerror or error}); this file system "
                    f"does not support file locks, so choose a folder on another one"
                ) from None
            try:
                here = os.stat(self.path)
                mine = os.fstat(fd)
                same = (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                same = False
            if not same:  # its owner released and removed it while we waited: lock the new file
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(folder: str | os.PathLike) -> int | None:
        """The pid of a live process holding ``folder``'s lock (``-1`` if unknown), else ``None``."""
        if fcntl is None:  # pragma: no cover
            return None
        try:
            fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                return -1 if pid is None else pid
            except OSError:
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- staging and commit -----------------------------------------------------------------------


def _commit_pending(staging: Path) -> bool:
    return (staging / COMMIT_FILE).is_file()


def _roll_forward(staging: Path) -> None:
    """Finish the commit whose manifest is in ``staging`` (idempotent; call with the lock held)."""
    folder = staging.parent
    try:
        manifest = json.loads((staging / COMMIT_FILE).read_text(encoding="utf-8"))
        move, remove = list(manifest["move"]), list(manifest["remove"])
    except (ValueError, KeyError, TypeError) as error:
        raise RunFolderError(
            f"the commit manifest in '{staging}' is unreadable ({error}); remove '{staging}'"
        ) from None
    for name in remove:
        _remove(folder / name)
    for name in move:
        if (staging / name).exists():
            if (folder / name).is_dir() and not (folder / name).is_symlink():
                shutil.rmtree(folder / name)  # a folder (the run's logs) is replaced whole
            os.replace(staging / name, folder / name)
    _fsync_dir(folder)
    shutil.rmtree(staging)
    _fsync_dir(folder)


def _commit(staging: Path, order: Iterable[str], replaces: Iterable[str]) -> None:
    move = [name for name in order if (staging / name).exists()]
    manifest = {"move": move, "remove": [name for name in replaces if name not in move]}
    atomic_write_text(staging / COMMIT_FILE, json.dumps(manifest) + "\n")  # the commit point
    _roll_forward(staging)


def _recover(staging: Path, keep: Callable[[Path], bool]) -> None:
    """With the lock of the folder above ``staging`` held: finish an interrupted commit, drop a
    staging folder that ``keep`` does not want, and remove temporary files of killed writes."""
    if _commit_pending(staging):
        _roll_forward(staging)
    elif staging.is_dir() and not keep(staging):
        shutil.rmtree(staging)
    for place in (staging.parent, staging):
        _remove_temporaries(place)


def settle(folder: str | os.PathLike, what: str = "run folder") -> None:
    """Before reading ``folder``: finish a commit that a killed writer left half done, or wait
    (up to 30 s) for a live writer to finish committing."""
    folder = Path(folder)
    staging = folder / STAGING
    deadline = time.monotonic() + _WAIT_SECONDS
    while _commit_pending(staging):
        try:
            lock = FolderLock(folder, what).acquire(patience=0)
        except _LockHeld as held:
            if time.monotonic() > deadline:
                raise RunFolderError(
                    f"{what} '{folder}' is being replaced by another genmod process (pid {held.pid}); "
                    f"try again when it has finished"
                ) from None
            time.sleep(0.05)
            continue
        except (OSError, RunFolderError) as error:
            raise RunFolderError(
                f"{what} '{folder}' holds a replacement that was interrupted while it was committed, and "
                f"it cannot be completed here ({getattr(error, 'strerror', None) or error}); open it "
                f"once with write access"
            ) from None
        try:
            if _commit_pending(staging):
                _roll_forward(staging)
        except OSError as error:
            raise RunFolderError(
                f"cannot complete the replacement in {what} '{folder}': {error.strerror or error}"
            ) from None
        finally:
            lock.release()


@dataclass
class TakenFolder:
    """A folder taken for writing: its lock is held until :meth:`release`.

    ``work`` is where the writer writes: the folder itself, or its staging folder
    ``.genmod-new`` when the new content replaces old content; :meth:`commit` then moves it in.
    """

    path: Path
    work: Path
    lock: FolderLock
    order: tuple[str, ...]
    replaces: tuple[str, ...]
    keep: Callable[[Path], bool]

    @property
    def staged(self) -> bool:
        return self.work != self.path

    def commit(self) -> Path:
        """Make the written content the folder's content, atomically; returns the folder."""
        try:
            if self.staged:
                _commit(self.work, self.order, self.replaces)
            _fsync_dir(self.path)
        except OSError as error:
            raise RunFolderError(f"cannot write {self.lock.what} '{self.path}': {error.strerror or error}") from None
        return self.path

    def release(self) -> None:
        """Drop an uncommitted staging folder unless it can be resumed, and unlock (idempotent)."""
        if self.lock._fd is None:  # released already: the folder may be another writer's now
            return
        try:
            if self.staged and self.work.is_dir() and not _commit_pending(self.work) and not self.keep(self.work):
                shutil.rmtree(self.work, ignore_errors=True)
        finally:
            self.lock.release()

    def __enter__(self) -> TakenFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_folder(path: Path, what: str) -> FolderLock:
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output path '{path}' exists and is not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        return FolderLock(path, what).acquire()
    except OSError as error:
        raise RunFolderError(f"cannot write to output folder '{path}': {error.strerror or error}") from None


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` other than its lock, temporary files and an output staging
    folder (never resumed: the next writer removes it)."""
    hidden = (LOCK_FILE, OUTPUT_STAGING)
    return [p for p in folder.iterdir() if p.name not in hidden and not _is_temporary(p.name)]


def _resumable(staging: Path) -> bool:
    return (staging / CHECKPOINT_FILE).is_file()


def take_run_folder(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> TakenFolder:
    """Take ``path`` for writing a run: lock it (a second writer is refused with this one's
    pid), finish or clean up what killed writers left, and choose where to write.

    A new run goes straight into an empty folder; into one that holds a run (only with
    ``overwrite``) it goes into the staging folder, and :meth:`TakenFolder.commit` swaps it in.
    ``resume`` continues the interrupted run: a staged replacement if there is one, else the
    run in the folder itself. Call :meth:`TakenFolder.release` when done, also after an error.
    """
    path = Path(path)
    if resume and not path.is_dir():
        raise RunFolderError(f"run folder '{path}' does not exist; nothing to resume")
    lock = _lock_folder(path, "run folder")
    staging = path / STAGING
    try:
        _recover(staging, keep=_resumable)
        if resume:
            work = resume_folder(path)
        else:
            entries = _visible(path)
            if entries and not overwrite:
                pending = ""
                if _resumable(staging):
                    pending = " (an interrupted replacement of its run can be continued with --resume)"
                raise RunFolderError(
                    f"output folder '{path}' is not empty (it may hold a run){pending}; choose another --out, "
                    f"or pass --overwrite to replace its run files"
                )
            if staging.exists():
                shutil.rmtree(staging)
            work = staging if any(p.name in _RUN_REPLACES for p in entries) else path
            if work == staging:
                staging.mkdir()
            (work / CHECKPOINT_FILE).unlink(missing_ok=True)  # a stale checkpoint must never be resumed
            _temp_file(work, _PROBE).unlink()
    except OSError as error:
        lock.release()
        raise RunFolderError(f"cannot write to output folder '{path}': {error.strerror or error}") from None
    except BaseException:
        lock.release()
        raise
    return TakenFolder(path, work, lock, _RUN_ORDER, _RUN_REPLACES, _resumable)


def take_output_folder(path: str | os.PathLike, files: Iterable[str], what: str = "output folder") -> TakenFolder:
    """Take ``path`` for replacing its ``files`` (written in this order, the last one last)
    atomically: write into ``taken.work``, then ``taken.commit()``; other files are kept."""
    path = Path(path)
    files = tuple(files)
    lock = _lock_folder(path, what)
    staging = path / OUTPUT_STAGING
    try:
        _recover(staging, keep=lambda _: False)
        staging.mkdir()
    except OSError as error:
        lock.release()
        raise RunFolderError(f"cannot write to {what} '{path}': {error.strerror or error}") from None
    except BaseException:
        lock.release()
        raise
    return TakenFolder(path, staging, lock, files, files, lambda _: False)


def check_output_folder(path: str | os.PathLike, overwrite: bool, what: str = "output folder") -> Path:
    """Refuse (before any work) an output folder that is a file, or holds files, unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output path '{path}' exists and is not a folder; choose another --out")
    if path.is_dir() and not overwrite and _visible(path):
        raise RunFolderError(
            f"{what} '{path}' is not empty; choose another --out, or pass --overwrite to replace what is there"
        )
    return path


def resume_folder(path: str | os.PathLike) -> Path:
    """Where the interrupted run in ``path`` has its checkpoint: a staged replacement's folder,
    or ``path`` itself. Refuses a folder that holds only a finished run."""
    path = Path(path)
    staging = path / STAGING
    if _resumable(staging) and not _commit_pending(staging):
        return staging
    if (path / "config.json").is_file():
        raise RunFolderError(f"run folder '{path}' holds a finished run; there is nothing to resume")
    return path


def prepare_run_folder(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``path`` for a new run, refusing a folder that already holds files unless
    ``overwrite``; fail early (before any training) if it cannot be written.

    This takes no lock and writes in place; :func:`take_run_folder` is the safe way to
    replace a run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output path '{path}' exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise RunFolderError(
            f"output folder '{path}' is not empty (it may hold a run); choose another --out, "
            f"or pass --overwrite to replace its run files"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        _temp_file(path, _PROBE).unlink()
    except OSError as error:
        raise RunFolderError(f"cannot write to output folder '{path}': {error.strerror or error}") from None
    return path

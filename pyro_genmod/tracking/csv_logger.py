"""``csv``: the run's ``history.csv``, rewritten atomically at the end of every epoch."""

from __future__ import annotations

from ..callbacks import EpochEnd, FitStart
from ..errors import RunFolderError
from ..runs import _history_csv, atomic_write
from .base import Logger, register_logger

__all__ = ["CSVLogger"]


@register_logger("csv")
class CSVLogger(Logger):
    """``folder/history.csv`` (the file a saved run holds: one row per epoch, train and validation
    ELBO, seconds, learning rate) written at every epoch's end, atomically, so a killed run keeps
    the history of its finished epochs. A resumed fit starts from the checkpoint's history, so
    epochs run after the checkpoint by the killed process are replaced, never repeated."""

    name = "csv"

    def __init__(self, folder, *, filename: str = "history.csv"):
        super().__init__(folder, every_n_steps=None)
        self.path = self.folder / filename
        self.rows: list[dict] = []

    def on_fit_start(self, event: FitStart) -> None:
        self.rows = [dict(row) for row in event.history]
        self._write()

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.rows.append(dict(event.record))
        self._write()

    def _write(self) -> None:
        payload = _history_csv(self.rows).encode("utf-8")

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                handle.write(payload)

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(f"cannot write '{self.path}': {error.strerror or error}") from None
        atomic_write(self.path, write, what="history")

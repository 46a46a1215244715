"""The learning curve of a training run: one row per epoch, written as ``metrics.csv``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Columns of ``metrics.csv`` and keys of each :attr:`History.epochs` row.
CSV_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_mcc",
    "val_f1",
    "val_acc",
    "val_weighted_mcc",
    "val_threshold",
    "val_threshold_weighted_mcc",
    "lr",
    "epoch_seconds",
    "improved",
)
METRICS_CSV = "metrics.csv"


@dataclass
class History:
    """Per-epoch rows (:data:`CSV_COLUMNS`) and the outcome of a :meth:`Trainer.fit`."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float = math.inf
    stop_reason: str = ""
    #: Decision threshold of the best epoch: its best on the validation weighted MCC (None before any epoch).
    best_threshold: float | None = None

    @property
    def best_row(self) -> dict[str, Any]:
        """The epoch row of the best epoch (``ValueError`` before any epoch)."""
        for row in self.epochs:
            if row["epoch"] == self.best_epoch:
                return row
        raise ValueError("the history has no best epoch yet")

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason == "early_stopping"

    def column(self, name: str) -> list[Any]:
        """One column of the epoch rows, e.g. ``history.column("val_loss")``."""
        return [row[name] for row in self.epochs]


def _format_csv(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # shortest exact round-trip
    return value


def csv_row(row: Mapping[str, Any]) -> list[Any]:
    """A history row as CSV cells (columns a checkpoint of an older version lacks are left empty)."""
    return [_format_csv(row.get(c, "")) for c in CSV_COLUMNS]


def csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(csv_row(row))
    return buffer.getvalue()

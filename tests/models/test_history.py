"""The learning curve of a run: History rows and metrics.csv text."""

from __future__ import annotations

import csv
import io

import pytest

from s2agri.models.history import CSV_COLUMNS, History, csv_text


def _row(epoch: int, val_loss: float) -> dict:
    return {column: 0.0 for column in CSV_COLUMNS} | {"epoch": epoch, "val_loss": val_loss, "improved": 0}


def test_best_row_and_columns() -> None:
    history = History(epochs=[_row(1, 0.5), _row(2, 0.25), _row(3, 0.4)], best_epoch=2)
    assert history.best_row["val_loss"] == 0.25
    assert history.column("epoch") == [1, 2, 3]
    assert not history.stopped_early and History(stop_reason="early_stopping").stopped_early
    with pytest.raises(ValueError, match="no best epoch"):
        _ = History().best_row


def test_csv_text_round_trips_floats_exactly_and_leaves_missing_columns_empty() -> None:
    row = _row(1, 0.1 + 0.2)
    del row["lr"]  # a column a checkpoint of an older version lacks
    rows = list(csv.DictReader(io.StringIO(csv_text([row]))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert float(rows[0]["val_loss"]) == 0.1 + 0.2 and rows[0]["lr"] == ""

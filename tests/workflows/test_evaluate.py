"""Scoring of predicted boxes: per-box and pooled rows, files, table, quicklook."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest
from eolearn.core import EOPatch
from sentinelhub import BBox

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.metrics import box_scores, confusion, mcc
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_MODEL_KEY
from s2agri.workflows.evaluate import evaluate_boxes, format_table, quicklook, write_metrics


def _box(folder, seed: int, with_prediction: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    patch = EOPatch(
        bbox=BBox((500000, 5100000, 500100, 5100100), crs="EPSG:32633"), timestamps=[dt.datetime(2019, 5, 1)]
    )
    patch[contract.BANDS] = rng.integers(1, 3000, (1, 10, 10, 12), dtype=np.uint16)
    patch[contract.CLM] = np.zeros((1, 10, 10, 1), np.uint8)
    patch[contract.IS_DATA] = np.ones((1, 10, 10, 1), bool)
    truth = np.zeros((40, 40), bool)
    truth[5:25, 8:30] = True
    not_declared = np.zeros((40, 40), bool)
    not_declared[30:35, 30:35] = True
    pred = truth.copy()
    pred[5:10, 8:30] = False  # false negatives
    pred[28:32, 0:10] = True  # false positives
    patch[contract.CULTIVATED] = truth[..., None]
    patch[contract.NOT_DECLARED] = not_declared[..., None]
    if with_prediction:
        patch[PRED_CULTIVATED] = pred[..., None]
        patch.meta_info[PRED_MODEL_KEY] = "lightgbm"
    patch.save(str(folder))
    return pred


def test_rows_match_box_scores_and_pool_sums_confusions(tmp_path) -> None:
    folders = [tmp_path / "box-000", tmp_path / "box-001"]
    preds = [_box(folder, i) for i, folder in enumerate(folders)]
    rows = evaluate_boxes(folders)
    assert [r["box"] for r in rows] == ["box-000", "box-001", "pooled"]
    assert {r["model"] for r in rows} == {"lightgbm"}
    truth = EOPatch.load(str(folders[0]))[contract.CULTIVATED][..., 0]
    not_declared = EOPatch.load(str(folders[0]))[contract.NOT_DECLARED][..., 0]
    expected = box_scores(truth, preds[0], not_declared)
    pixel_keys = {"model", "box", *expected}
    assert {k: v for k, v in rows[0].items() if k in pixel_keys} == pytest.approx(
        {"model": "lightgbm", "box": "box-000", **expected}
    )
    # no PARCELS_PRED in these boxes: no predicted object, every reference field missed
    assert rows[0]["n_predicted"] == 0 and rows[0]["object_recall"] == 0.0
    # identical boxes: pooled unweighted MCC equals the MCC of the doubled confusion
    doubled = confusion(np.concatenate([truth] * 2), np.concatenate(preds))
    assert rows[2]["mcc_full"] == pytest.approx(mcc(doubled))
    assert 0 < rows[0]["weighted_mcc"] < 1


def test_missing_prediction_is_a_clear_error(tmp_path) -> None:
    _box(tmp_path / "box-000", 0, with_prediction=False)
    with pytest.raises(S2AgriInputError, match="run predict first"):
        evaluate_boxes([tmp_path / "box-000"])


def test_metrics_files_table_and_quicklook(tmp_path) -> None:
    folder = tmp_path / "box-000"
    _box(folder, 0)
    rows = evaluate_boxes([folder])
    write_metrics(rows, tmp_path / "metrics.json", tmp_path / "metrics.csv")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert [w["box"] for w in written] == [r["box"] for r in rows]
    assert [w["weighted_mcc"] for w in written] == pytest.approx([r["weighted_mcc"] for r in rows])
    with (tmp_path / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["box"] for r in table] == ["box-000", "pooled"]
    assert float(table[0]["mcc_mask"]) == pytest.approx(rows[0]["mcc_mask"])
    text = format_table(rows)
    assert "weighted_mcc" in text.splitlines()[0] and "pooled" in text
    quicklook(folder, tmp_path / "box-000.png")
    assert (tmp_path / "box-000.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(tmp_path / "box-000.png") as image:  # large enough to read (was 900 x 324)
        assert image.size == (1900, 720)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

"""Painting per-parcel predictions at 2.5 m (s2agri.tasks.predict_parcel.PaintParcelPredictionsTask)."""

from __future__ import annotations

import numpy as np
import pytest
from eolearn.core import EOPatch

from s2agri.tasks import contract
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask
from s2agri.tasks.predict_parcel import PaintParcelPredictionsTask
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_MODEL_KEY, PRED_PROBA
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.tasks.sources.simulator import box_bbox, simulate_eopatch
from s2agri.tasks.zonal import PARCEL_STATS, ZonalStatisticsTask, parcel_index_map


@pytest.fixture(scope="module")
def sim_box() -> EOPatch:
    eopatch = simulate_eopatch(box_bbox(0, 60), 0, 5, 5)
    eopatch = ValidMaskTask().execute(ReflectanceTask().execute(eopatch))
    return ZonalStatisticsTask().execute(eopatch)


@pytest.mark.parametrize("buffer", [0.0, contract.REFERENCE_BUFFER_M])
def test_painter_writes_the_reference_footprint(sim_box: EOPatch, buffer: float) -> None:
    parcels = sim_box[contract.REFERENCE].copy()
    parcels["proba"] = 1.0
    patch = PaintParcelPredictionsTask(parcels, buffer=buffer, model_name="tempcnn").execute(sim_box.copy())
    reference = RasteriseReferenceTask(buffer=buffer).execute(sim_box.copy())
    footprint = reference[contract.ALL_POLYS][..., 0] > 0
    painted = patch[PRED_CULTIVATED][..., 0]
    assert painted.shape == (240, 240) and painted.dtype == bool
    np.testing.assert_array_equal(painted, footprint)
    np.testing.assert_array_equal(patch[PRED_PROBA][..., 0], footprint.astype(np.float32))
    assert patch.meta_info[PRED_MODEL_KEY] == "tempcnn"


def test_painter_values_threshold_and_missing_predictions(sim_box: EOPatch) -> None:
    table = sim_box[PARCEL_STATS].copy()
    proba = np.linspace(0.0, 1.0, len(table))
    proba[0] = np.nan  # no prediction: background
    table["proba"] = proba
    patch = sim_box.copy()
    patch[PARCEL_STATS] = table
    patch = PaintParcelPredictionsTask(threshold=0.6).execute(patch)
    index_2p5 = parcel_index_map(table, sim_box.bbox, (240, 240), buffer=contract.REFERENCE_BUFFER_M)
    expected = np.where(index_2p5 >= 0, proba[np.maximum(index_2p5, 0)], 0.0)
    expected = np.nan_to_num(expected).astype(np.float32)
    np.testing.assert_array_equal(patch[PRED_PROBA][..., 0], expected)
    np.testing.assert_array_equal(patch[PRED_CULTIVATED][..., 0], expected >= np.float32(0.6))
    assert (patch[PRED_PROBA][..., 0][index_2p5 == 0] == 0).all()
    table["proba"] = 1.5
    patch[PARCEL_STATS] = table
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        PaintParcelPredictionsTask().execute(patch)

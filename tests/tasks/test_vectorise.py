"""Parcel polygons from the predicted mask and their GeoPackage export (s2agri.tasks.vectorise)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from eolearn.core import EOPatch
from scipy import ndimage
from sentinelhub import CRS, BBox

from s2agri.tasks.prediction import BOX_ID_KEY, PRED_CULTIVATED, PRED_PROBA, write_prediction
from s2agri.tasks.vectorise import (
    PARCEL_COLUMNS,
    PARCELS_PRED,
    VectoriseTask,
    _polygonal,
    export_parcels,
)

SIZE = 80  # 2.5 m pixels: a 200 m box
ORIGIN = (500000.0, 5100000.0)
PIXEL_AREA = 2.5 * 2.5


def _patch(mask: np.ndarray, proba: np.ndarray | None = None, box: str = "eopatch-01") -> EOPatch:
    """A patch with a 200 m bbox and PRED_* features from ``mask`` (and ``proba``)."""
    bbox = BBox((*ORIGIN, ORIGIN[0] + 200, ORIGIN[1] + 200), CRS(32633))
    patch = EOPatch(bbox=bbox)
    patch[PRED_CULTIVATED] = mask[..., None].astype(bool)
    patch[PRED_PROBA] = (mask if proba is None else proba).astype(np.float32)[..., None]
    patch.meta_info["PRED_MODEL"] = "test-model"
    patch.meta_info[BOX_ID_KEY] = box
    return patch


def _vectorise(mask: np.ndarray, proba: np.ndarray | None = None, **kwargs: object) -> gpd.GeoDataFrame:
    return VectoriseTask(**kwargs).execute(_patch(mask, proba))[PARCELS_PRED]


def _pixel_box(row: int, col: int, rows: int, cols: int) -> shapely.Polygon:
    """The polygon of a pixel block in map coordinates (row 0 at the top of the bbox)."""
    top = ORIGIN[1] + 200 - 2.5 * row
    left = ORIGIN[0] + 2.5 * col
    return shapely.box(left, top - 2.5 * rows, left + 2.5 * cols, top)


def test_rectangle_area_perimeter_bounds_and_attributes() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:30, 5:45] = True  # 20 rows x 40 cols = 50 m x 100 m
    proba = np.where(mask, np.random.default_rng(2).uniform(0.5, 1.0, mask.shape), 0.1)

    parcels = _vectorise(mask, proba)

    assert list(parcels.columns) == [*PARCEL_COLUMNS, "geometry"]
    assert len(parcels) == 1
    row = parcels.iloc[0]
    assert row.area_m2 == pytest.approx(5000.0)
    assert row.perimeter_m == pytest.approx(300.0)
    assert shapely.equals(row.geometry, _pixel_box(10, 5, 20, 40))
    assert row.mean_proba == pytest.approx(proba[mask].astype(np.float32).astype(np.float64).mean())
    assert row.box_id == "eopatch-01"
    assert row.model == "test-model"
    assert parcels.crs.to_epsg() == 32633
    assert parcels.is_valid.all()
    # the upper-left corner of the top-left pixel (row 10, col 5): x 500000 + 12.5, y 5100200 - 25
    assert row.parcel_id == "E500012.5N5100175"


def test_parcel_ids_are_unique_stable_and_survive_simplification() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[2:20, 2:20] = True
    mask[2:20, 21:40] = True  # touches nothing (one column gap)
    mask[30:60, 10:12] = True  # an L shape: its top-left pixel is (30, 10)
    mask[58:60, 10:50] = True
    mask[2, 60] = mask[3, 59:62] = mask[4:20, 58:63] = True  # a roof: the top row is one pixel
    simplified = _vectorise(mask, simplify_tolerance_m=5.0)
    exact = _vectorise(mask, simplify_tolerance_m=0.0)
    assert simplified["parcel_id"].is_unique and len(simplified) == 4
    assert sorted(simplified["parcel_id"]) == sorted(exact["parcel_id"])
    assert {"E500005N5100195", "E500052.5N5100195", "E500025N5100125", "E500150N5100195"} == set(
        simplified["parcel_id"]
    )


def test_hole_is_subtracted_from_area_and_added_to_perimeter() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:50, 10:50] = True
    mask[20:30, 20:30] = False  # 40 x 40 px with a 10 x 10 px hole

    parcels = _vectorise(mask)

    assert len(parcels) == 1
    geometry = parcels.geometry.iloc[0]
    assert len(geometry.interiors) == 1
    assert parcels.area_m2.iloc[0] == pytest.approx((1600 - 100) * PIXEL_AREA)
    assert parcels.perimeter_m.iloc[0] == pytest.approx(4 * 100 + 4 * 25)


def test_small_polygons_are_dropped_at_min_area() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[0:8, 0:8] = True  # 64 px = 400 m2: kept
    mask[20:27, 20:29] = True  # 63 px = 393.75 m2: dropped
    mask[40:41, 40:41] = True  # 1 px: dropped

    parcels = _vectorise(mask)

    assert len(parcels) == 1
    assert parcels.area_m2.iloc[0] == pytest.approx(400.0)
    assert len(_vectorise(mask, min_area_m2=0.0)) == 3


def test_diagonal_neighbours_are_two_polygons() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:20, 10:20] = True
    mask[20:30, 20:30] = True  # touches the first square at one corner

    parcels = _vectorise(mask)

    assert len(parcels) == 2
    np.testing.assert_allclose(sorted(parcels.area_m2), [625.0, 625.0])
    assert parcels.geometry.iloc[0].intersection(parcels.geometry.iloc[1]).area == 0


def test_mean_proba_of_several_parcels() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[0:10, 0:10] = True
    mask[50:70, 50:60] = True
    proba = np.zeros((SIZE, SIZE), np.float32)
    proba[0:10, 0:10] = 0.75
    proba[50:70, 50:60] = np.linspace(0.5, 1.0, 200, dtype=np.float32).reshape(20, 10)

    parcels = _vectorise(mask, proba).sort_values("area_m2")

    np.testing.assert_allclose(
        parcels.mean_proba, [0.75, proba[50:70, 50:60].mean(dtype=np.float64)], rtol=1e-9
    )
    assert np.isnan(_vectorise(mask, proba, proba_feature=None).mean_proba).all()


def test_simplification_keeps_valid_geometries_close_to_the_pixels() -> None:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    mask = (rows - 40) ** 2 + (cols - 40) ** 2 <= 30**2  # a pixelated disc with a staircase edge
    mask |= cols > rows + 45  # and a staircase triangle in a corner

    simplified = _vectorise(mask)
    raw = _vectorise(mask, simplify_tolerance_m=None)

    assert len(simplified) == len(raw) == 2
    assert simplified.is_valid.all()
    np.testing.assert_allclose(sorted(raw.area_m2), sorted(np.bincount(_labels(mask))[1:] * PIXEL_AREA))
    np.testing.assert_allclose(sorted(simplified.area_m2), sorted(raw.area_m2), rtol=0.02)
    assert (
        shapely.get_num_coordinates(simplified.geometry).sum()
        < shapely.get_num_coordinates(raw.geometry).sum()
    )


def _labels(mask: np.ndarray) -> np.ndarray:
    return ndimage.label(mask)[0].ravel()


def test_empty_mask_gives_an_empty_layer_with_columns_and_crs() -> None:
    parcels = _vectorise(np.zeros((SIZE, SIZE), bool))
    assert len(parcels) == 0
    assert list(parcels.columns) == [*PARCEL_COLUMNS, "geometry"]
    assert parcels.crs.to_epsg() == 32633


def test_box_and_model_arguments_win_over_meta_info() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:10, :10] = True
    parcels = _vectorise(mask, box_id="other", model="m2")
    assert parcels.box_id.tolist() == ["other"]
    assert parcels.model.tolist() == ["m2"]


def test_bad_input_raises() -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    patch = _patch(mask)
    del patch.meta_info["PRED_MODEL"]
    with pytest.raises(ValueError, match="no model name"):
        VectoriseTask().execute(patch)
    with pytest.raises(ValueError, match=r"not 2\.5 m"):
        VectoriseTask().execute(_patch(np.zeros((40, 40), bool)))
    patch = _patch(mask)
    patch[PRED_PROBA] = np.zeros((SIZE, SIZE - 1, 1), np.float32)
    with pytest.raises(ValueError, match="PRED_PROBA has shape"):
        VectoriseTask().execute(patch)
    with pytest.raises(ValueError, match="min_area_m2"):
        VectoriseTask(min_area_m2=-1)


def test_polygonal_repairs_an_invalid_polygon() -> None:
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    repaired = _polygonal(bowtie)
    assert not bowtie.is_valid
    assert repaired.is_valid
    assert repaired.area == pytest.approx(2.0)


def test_geopackage_round_trip_is_atomic(tmp_path: Path) -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:50, 10:50] = True
    mask[20:30, 20:30] = False
    mask[60:70, 0:40] = True
    first = _vectorise(mask)
    second = VectoriseTask().execute(_patch(mask, box="eopatch-02"))[PARCELS_PRED]
    path = tmp_path / "parcels.gpkg"
    path.write_text("old content")  # replaced as a whole

    written = export_parcels([first, second], path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["parcels.gpkg"]
    back = gpd.read_file(path, layer="parcels", engine="pyogrio")
    assert len(back) == len(written) == 4
    assert back.crs.to_epsg() == 32633
    assert list(back.columns) == [*PARCEL_COLUMNS, "geometry"]
    assert back.box_id.tolist() == ["eopatch-01", "eopatch-01", "eopatch-02", "eopatch-02"]
    np.testing.assert_allclose(back.area_m2, written.area_m2)
    assert shapely.equals(back.geometry.values, written.geometry.values).all()


def test_export_of_an_empty_layer(tmp_path: Path) -> None:
    path = tmp_path / "empty.gpkg"
    export_parcels(_vectorise(np.zeros((SIZE, SIZE), bool)), path)
    back = gpd.read_file(path, engine="pyogrio")
    assert len(back) == 0
    assert back.crs.to_epsg() == 32633
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.gpkg"]


def test_export_rejects_bad_input(tmp_path: Path) -> None:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:10, :10] = True
    parcels = _vectorise(mask)
    with pytest.raises(ValueError, match="no parcel layer"):
        export_parcels([], tmp_path / "x.gpkg")
    with pytest.raises(ValueError, match="CRS"):
        export_parcels([parcels, parcels.to_crs(4326)], tmp_path / "x.gpkg")
    with pytest.raises(ValueError, match="does not exist"):
        export_parcels(parcels, tmp_path / "missing" / "x.gpkg")
    assert list(tmp_path.iterdir()) == []


def test_patch_from_write_prediction_vectorises(tmp_path: Path) -> None:
    patch = _patch(np.zeros((SIZE, SIZE), bool))
    patch[PRED_CULTIVATED[0], "BANDS_GRID"] = np.zeros((20, 20, 1), bool)
    proba = np.zeros((SIZE, SIZE), np.float32)
    proba[:20, :20] = 0.9
    write_prediction(patch, proba, "from-helper", reference_feature=(PRED_CULTIVATED[0], "BANDS_GRID"))
    parcels = VectoriseTask().execute(patch)[PARCELS_PRED]
    assert parcels.model.tolist() == ["from-helper"]
    assert parcels.mean_proba.iloc[0] == pytest.approx(0.9)

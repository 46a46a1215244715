"""Seamless parcels across box edges (s2agri.tasks.merge)."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from eolearn.core import EOPatch
from rasterio.transform import Affine
from scipy import ndimage
from sentinelhub import CRS, BBox

from s2agri.tasks import merge as merge_module
from s2agri.tasks.merge import MERGED_COLUMNS, merge_parcels, trace_boxes, trace_eopatch
from s2agri.tasks.prediction import BOX_ID_KEY, PRED_CULTIVATED, PRED_PROBA
from s2agri.tasks.vector_export import write_vector
from s2agri.tasks.vectorise import PARCELS_PRED, VectoriseTask

SIZE = 40  # pixels per box side: 100 m boxes at 2.5 m
ORIGIN = (500000.0, 5100000.0)
PIXEL_AREA = 2.5 * 2.5


def _split(
    mask: np.ndarray,
    proba: np.ndarray | None = None,
    *,
    origin: tuple[float, float] = ORIGIN,
    model: str = "m",
) -> tuple[list[gpd.GeoDataFrame], list[shapely.Polygon]]:
    """Cut a region mask (rows x cols, multiples of SIZE) into boxes ``b<row><col>`` and trace them."""
    masks, probas, transforms, names = [], [], [], []
    for r in range(mask.shape[0] // SIZE):
        for c in range(mask.shape[1] // SIZE):
            window = np.s_[r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE]
            masks.append(mask[window])
            probas.append(None if proba is None else proba[window])
            transforms.append(Affine(2.5, 0, origin[0] + 2.5 * SIZE * c, 0, -2.5, origin[1] - 2.5 * SIZE * r))
            names.append(f"b{r}{c}")
    return trace_boxes(masks, transforms, 32633, model=model, probas=probas, box_ids=names)


def _whole(
    mask: np.ndarray, proba: np.ndarray | None = None
) -> tuple[list[gpd.GeoDataFrame], list[shapely.Polygon]]:
    """The same region traced as one box."""
    transform = Affine(2.5, 0, ORIGIN[0], 0, -2.5, ORIGIN[1])
    return trace_boxes([mask], [transform], 32633, model="m", probas=[proba], box_ids=["all"])


def _pixels(row: int, col: int, rows: int, cols: int) -> shapely.Polygon:
    """A block of pixels of the region grid in map coordinates."""
    left, top = ORIGIN[0] + 2.5 * col, ORIGIN[1] - 2.5 * row
    return shapely.box(left, top - 2.5 * rows, left + 2.5 * cols, top)


def _assert_clean(parcels: gpd.GeoDataFrame) -> None:
    """Valid, no duplicate, no overlap of positive area, attributes of the geometry."""
    geoms = np.asarray(parcels.geometry.values)
    assert shapely.is_valid(geoms).all()
    assert parcels["parcel_id"].is_unique
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = left < right
    assert np.all(shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]])) == 0)
    np.testing.assert_allclose(parcels["area_m2"], shapely.area(geoms))
    np.testing.assert_allclose(parcels["perimeter_m"], shapely.length(geoms))


def _random_fields(seed: int, shape: tuple[int, int], sigma: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.normal(size=shape), sigma) > 0.05
    return mask, rng.uniform(0.0, 1.0, shape)


def test_field_across_an_edge_is_one_polygon_with_exact_area_and_weighted_proba() -> None:
    mask = np.zeros((SIZE, 2 * SIZE), bool)
    proba = np.zeros(mask.shape)
    mask[5:15, 25:50] = True  # 10 x 15 px in b00, 10 x 10 px in b01
    proba[5:15, 25:40], proba[5:15, 40:50] = 0.9, 0.5
    mask[20:30, 30:40] = True  # b00, touches the edge ...
    mask[30:38, 40:48] = True  # ... and this block of b01 only at one pixel corner
    proba[20:30, 30:40], proba[30:38, 40:48] = 0.8, 0.7
    mask[30:39, 2:12] = True  # inside b00
    frames, boxes = _split(mask, proba)
    assert [len(frame) for frame in frames] == [3, 2]

    parcels = merge_parcels(frames, boxes, tolerance=None, min_area_m2=0)

    _assert_clean(parcels)
    assert list(parcels.columns) == [*MERGED_COLUMNS, "geometry"]
    assert len(parcels) == 4
    crossing = parcels[parcels["box_ids"] == "b00,b01"]
    assert len(crossing) == 1
    row = crossing.iloc[0]
    assert row.geometry.equals(_pixels(5, 25, 10, 25))
    assert len(row.geometry.exterior.coords) == 5  # no vertex left on the former box edge
    assert row.area_m2 == 250 * PIXEL_AREA
    assert row.perimeter_m == 2 * (25 + 10) * 2.5
    assert row.mean_proba == pytest.approx((150 * 0.9 + 100 * 0.5) / 250)  # not (0.9 + 0.5) / 2
    assert row.model == "m"
    assert row.parcel_id == "E500062.5N5099987.5"  # upper-left corner of the top-left pixel
    corner = parcels[parcels.intersects(shapely.Point(ORIGIN[0] + 100, ORIGIN[1] - 75))]
    assert sorted(corner["box_ids"]) == ["b00", "b01"]  # corner contact: still two parcels
    assert sorted(corner["area_m2"]) == [64 * PIXEL_AREA, 100 * PIXEL_AREA]
    assert sorted(parcels["box_ids"]) == ["b00", "b00", "b00,b01", "b01"]
    total = sum(frame["area_m2"].sum() for frame in frames)
    assert parcels["area_m2"].sum() == pytest.approx(total, rel=1e-12)


def test_field_across_the_corner_of_four_boxes_and_rings_across_edges() -> None:
    mask = np.zeros((2 * SIZE, 2 * SIZE), bool)
    mask[30:50, 35:45] = True  # a plus across the corner of the four boxes
    mask[35:45, 30:50] = True
    mask[2:20, 30:52] = True  # a ring across the edge b00|b01: its hole spans both boxes
    mask[6:16, 34:48] = False
    mask[55:75, 2:30] = True  # a field of b10 with a hole of its own ...
    mask[60:64, 6:10] = False
    mask[55:75, 30:40] = True  # ... that crosses into b11 (hole stays a hole)
    mask[56:74, 40:46] = True
    frames, boxes = _split(mask, np.where(mask, 0.75, 0.0))

    parcels = merge_parcels(frames, boxes, tolerance=None, min_area_m2=0)

    _assert_clean(parcels)
    assert len(parcels) == 3
    by_boxes = parcels.set_index("box_ids")
    plus = by_boxes.loc["b00,b01,b10,b11"]
    assert plus.area_m2 == (20 * 10 + 2 * 10 * 5) * PIXEL_AREA
    assert plus.geometry.geom_type == "Polygon" and len(plus.geometry.exterior.coords) == 13
    ring = by_boxes.loc["b00,b01"]
    assert len(ring.geometry.interiors) == 1
    assert ring.geometry.equals(_pixels(2, 30, 18, 22).difference(_pixels(6, 34, 10, 14)))
    holed = by_boxes.loc["b10,b11"]
    assert len(holed.geometry.interiors) == 1
    assert holed.area_m2 == (20 * 38 - 16 + 18 * 6) * PIXEL_AREA
    np.testing.assert_allclose(parcels["mean_proba"], 0.75)


def test_diagonal_blocks_at_the_corner_of_four_boxes_stay_apart() -> None:
    mask = np.zeros((2 * SIZE, 2 * SIZE), bool)
    mask[30:40, 30:40] = True  # b00
    mask[40:50, 40:50] = True  # b11: touches b00's block at the corner of the boxes
    mask[40:50, 30:40] = False
    frames, boxes = _split(mask)

    parcels = merge_parcels(frames, boxes, tolerance=None, min_area_m2=0)

    _assert_clean(parcels)
    assert sorted(parcels["box_ids"]) == ["b00", "b11"]


@pytest.mark.parametrize("tolerance", [None, 2.5])
def test_merging_boxes_equals_tracing_the_region_as_one_box(tolerance: float | None) -> None:
    mask, proba = _random_fields(3, (3 * SIZE, 3 * SIZE))
    frames, boxes = _split(mask, proba)
    whole_frames, whole_boxes = _whole(mask, proba)

    parcels = merge_parcels(frames, boxes, tolerance=tolerance)
    reference = merge_parcels(whole_frames, whole_boxes, tolerance=tolerance)
    shuffled = merge_parcels(frames[::-1], boxes[::-1], tolerance=tolerance)

    _assert_clean(parcels)
    assert (parcels["box_ids"].str.contains(",")).sum() >= 5  # several fields cross edges
    assert list(parcels["parcel_id"]) == list(reference["parcel_id"])
    assert shapely.equals_exact(parcels.geometry.values, reference.geometry.values, 0).all()
    np.testing.assert_allclose(parcels["mean_proba"], reference["mean_proba"], rtol=1e-12)
    np.testing.assert_array_equal(parcels["area_m2"], reference["area_m2"])
    assert shuffled.drop(columns="geometry").equals(parcels.drop(columns="geometry"))
    assert shapely.equals_exact(shuffled.geometry.values, parcels.geometry.values, 0).all()
    if tolerance is None:  # pixel polygons: the area of each parcel is its pixel count
        kept = merge_parcels(frames, boxes, tolerance=None, min_area_m2=0)
        total = sum(frame["area_m2"].sum() for frame in frames)
        assert math.isclose(kept["area_m2"].sum(), total, rel_tol=1e-12)
        labels, _ = ndimage.label(mask, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
        sizes = np.bincount(labels.ravel())[1:]
        assert sorted(kept["area_m2"] / PIXEL_AREA) == sorted(sizes.astype(float))
    else:  # simplified: fewer vertices, areas close to the pixel counts
        raw = merge_parcels(frames, boxes, tolerance=None)
        assert (
            shapely.get_num_coordinates(parcels.geometry.values).sum()
            < 0.7 * shapely.get_num_coordinates(raw.geometry.values).sum()
        )
        np.testing.assert_allclose(parcels["area_m2"], raw["area_m2"], rtol=0.1)


@pytest.mark.parametrize("tolerance", [None, 2.5])
def test_merging_the_merged_layer_again_changes_nothing(tolerance: float | None) -> None:
    mask, proba = _random_fields(5, (3 * SIZE, 3 * SIZE))
    frames, boxes = _split(mask, proba)
    region = shapely.union_all(boxes)

    parcels = merge_parcels(frames, boxes, tolerance=tolerance)
    again = merge_parcels([parcels], [region], tolerance=tolerance)

    assert len(parcels) > 10 and parcels["box_ids"].str.contains(",").sum() > 3
    assert again.drop(columns="geometry").equals(parcels.drop(columns="geometry"))
    assert shapely.equals_exact(again.geometry.values, parcels.geometry.values, 0).all()


def test_min_area_applies_to_the_merged_parcel() -> None:
    mask = np.zeros((SIZE, 2 * SIZE), bool)
    mask[10:18, 35:45] = True  # 8 x 5 px = 250 m2 on each side: 500 m2 in all
    mask[25:29, 5:15] = True  # 40 px = 250 m2, alone
    frames, boxes = _split(mask)
    assert all((frame["area_m2"] < 400).all() for frame in frames)

    parcels = merge_parcels(frames, boxes)

    assert list(parcels["box_ids"]) == ["b00,b01"]
    assert parcels["area_m2"].iloc[0] == pytest.approx(80 * PIXEL_AREA)


def test_box_origins_a_rounding_error_apart_still_merge() -> None:
    origin = (500000.1, 5100000.3)  # not on a binary-exact grid
    mask = np.zeros((SIZE, 2 * SIZE), bool)
    mask[5:15, 30:50] = True
    frames, boxes = _split(mask, origin=origin)
    nudged = shapely.transform(frames[1].geometry.values, lambda xy: xy + 1e-7)
    frames[1] = frames[1].set_geometry(gpd.GeoSeries(nudged, crs=frames[1].crs))

    parcels = merge_parcels(frames, boxes, tolerance=None)

    assert shapely.equals_exact(frames[1].geometry.values, nudged, 0).all()  # inputs not modified
    assert len(parcels) == 1
    assert parcels["area_m2"].iloc[0] == pytest.approx(200 * PIXEL_AREA, rel=1e-9)
    assert shapely.get_num_coordinates(parcels.geometry.iloc[0]) == 5


def test_simplified_parts_on_a_shared_edge_are_refused() -> None:
    mask = np.zeros((SIZE, 2 * SIZE), bool)
    rows, cols = np.indices(mask.shape)
    mask[(np.abs(rows - 20) + np.abs(cols - 40) < 15)] = True  # a diamond across the edge: staircases
    frames, boxes = [], []
    for c in range(2):
        bbox = BBox((ORIGIN[0] + 100 * c, ORIGIN[1] - 100, ORIGIN[0] + 100 * (c + 1), ORIGIN[1]), CRS(32633))
        patch = EOPatch(bbox=bbox)
        patch[PRED_CULTIVATED] = mask[:, c * SIZE : (c + 1) * SIZE, None]
        patch[PRED_PROBA] = mask[:, c * SIZE : (c + 1) * SIZE, None].astype(np.float32)
        frames.append(VectoriseTask(box_id=f"b{c}", model="m").execute(patch)[PARCELS_PRED])  # simplified
        boxes.append(bbox)

    with pytest.raises(ValueError, match="not a pixel polygon"):
        merge_parcels(frames, boxes)


def test_bad_input_raises() -> None:
    mask = np.zeros((SIZE, 2 * SIZE), bool)
    mask[5:15, 30:50] = True
    frames, boxes = _split(mask)
    with pytest.raises(ValueError, match="one box per layer"):
        merge_parcels(frames, boxes[:1])
    with pytest.raises(ValueError, match="different models"):
        merge_parcels([frames[0], frames[1].assign(model="other")], boxes)
    with pytest.raises(ValueError, match="overlap"):
        merge_parcels(frames, [boxes[0], shapely.affinity.translate(boxes[0], 50)])
    with pytest.raises(ValueError, match="not aligned"):
        merge_parcels(frames, [boxes[0], shapely.affinity.translate(boxes[1], 1.0)])
    with pytest.raises(ValueError, match="outside its box"):
        merge_parcels(frames[::-1], boxes)
    with pytest.raises(ValueError, match="one CRS"):
        merge_parcels([frames[0], frames[1].set_crs(32634, allow_override=True)], boxes)
    with pytest.raises(ValueError, match="EPSG:32634"):
        merge_parcels(frames, [BBox(tuple(boxes[0].bounds), CRS(32634)), boxes[1]])
    with pytest.raises(ValueError, match="lacks the columns"):
        merge_parcels([frames[0].drop(columns="model"), frames[1]], boxes)
    with pytest.raises(ValueError, match="negative"):
        merge_parcels(frames, boxes, tolerance=-1)


def test_empty_frames_give_an_empty_layer() -> None:
    frames, boxes = _split(np.zeros((SIZE, 2 * SIZE), bool))

    parcels = merge_parcels(frames, boxes)

    assert parcels.empty
    assert list(parcels.columns) == [*MERGED_COLUMNS, "geometry"]
    assert parcels.crs.to_epsg() == 32633


def test_boxes_as_bbox_and_tuples_and_nan_proba() -> None:
    mask = np.zeros((SIZE, 2 * SIZE), bool)
    mask[5:15, 30:50] = True
    frames, boxes = _split(mask)  # no probabilities: mean_proba NaN
    bboxes = [BBox(tuple(box.bounds), CRS(32633)) for box in boxes]

    by_bbox = merge_parcels(frames, bboxes)
    by_tuple = merge_parcels(frames, [tuple(box.bounds) for box in boxes])

    assert by_bbox.drop(columns="geometry").equals(by_tuple.drop(columns="geometry"))
    assert len(by_bbox) == 1 and np.isnan(by_bbox["mean_proba"].iloc[0])


def test_trace_eopatch_leaves_the_patch_unchanged() -> None:
    bbox = BBox((*ORIGIN, ORIGIN[0] + 100, ORIGIN[1] + 100), CRS(32633))
    patch = EOPatch(bbox=bbox)
    mask = np.zeros((SIZE, SIZE, 1), bool)
    mask[:4, :4] = True  # 16 px: kept (no minimum area per box)
    patch[PRED_CULTIVATED] = mask
    patch[PRED_PROBA] = np.full((SIZE, SIZE, 1), 0.6, np.float32)
    patch.meta_info[BOX_ID_KEY] = "box-7"
    patch.meta_info["PRED_MODEL"] = "lgbm"

    parcels, box = trace_eopatch(patch)

    assert PARCELS_PRED not in patch
    assert box.equals(shapely.box(*ORIGIN, ORIGIN[0] + 100, ORIGIN[1] + 100))
    assert list(parcels["box_id"]) == ["box-7"] and list(parcels["model"]) == ["lgbm"]
    assert parcels["area_m2"].iloc[0] == 16 * PIXEL_AREA
    assert parcels["mean_proba"].iloc[0] == pytest.approx(0.6)


def test_batched_simplification_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    mask, proba = _random_fields(7, (3 * SIZE, 3 * SIZE), sigma=1.5)
    frames, boxes = _split(mask, proba)
    raw = merge_parcels(frames, boxes, tolerance=None, min_area_m2=0)
    geoms = np.asarray(raw.geometry.values)
    order = merge_module._simplify_order(geoms, raw["parcel_id"].to_numpy(), ORIGIN, 2.5)
    assert len(geoms) > 40

    monkeypatch.setattr(merge_module, "_SIMPLIFY_BATCH", 7)
    batched = merge_module._simplify(geoms[order], 2.5, 2.5)

    assert shapely.equals_exact(batched, shapely.coverage_simplify(geoms[order], 2.5), 0).all()


@pytest.mark.filterwarnings("ignore:Column names longer than 10 characters:UserWarning")
@pytest.mark.filterwarnings("ignore:Normalized/laundered field name:RuntimeWarning")
@pytest.mark.parametrize("suffix", [".gpkg", ".parquet", ".fgb", ".shp"])
def test_merged_layer_exports_to_every_vector_format(tmp_path: Path, suffix: str) -> None:
    mask, proba = _random_fields(11, (2 * SIZE, 2 * SIZE))
    frames, boxes = _split(mask, proba)
    parcels = merge_parcels(frames, boxes)
    path = tmp_path / f"parcels{suffix}"

    write_vector(parcels, path)

    back = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path, engine="pyogrio")
    back = back.sort_values("parcel_id", ignore_index=True)  # FlatGeobuf stores in spatial order
    assert len(back) == len(parcels)
    assert back.crs.to_epsg() == 32633
    assert shapely.is_valid(back.geometry.values).all()
    np.testing.assert_allclose(shapely.area(back.geometry.values), parcels["area_m2"], rtol=1e-9)
    assert list(back["parcel_id"]) == list(parcels["parcel_id"])
    assert list(back["box_ids"]) == list(parcels["box_ids"])
    np.testing.assert_allclose(back["mean_proba"], parcels["mean_proba"], rtol=1e-9)

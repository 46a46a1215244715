"""RasteriseReferenceTask: the challenge rasterisation on hand-built parcels, and bad input.

The small box of ``build_eopatch`` is 200 m x 200 m at origin (500000, 5100000) in EPSG:32633;
its reference masks are 80 x 80 px at 2.5 m, row 0 at the north edge.
"""

from __future__ import annotations

import logging
import warnings

import geopandas as gpd
import numpy as np
import pytest
import shapely
from eolearn.core.exceptions import EORuntimeWarning
from eolearn.geometry import VectorToRasterTask
from eopatch_factory import build_eopatch

from s2agri.tasks import contract
from s2agri.tasks.reference import RasteriseReferenceTask

X0, Y0 = 500000.0, 5100000.0
SHAPE = (80, 80, 1)
PX_AREA = 2.5 * 2.5
#: A 100 m square on the 2.5 m grid, shrunk by the 2.5 m buffer to 95 m: 38 x 38 pixels.
SQUARE_PX = 38 * 38
LOGGER_NAME = "s2agri.tasks.reference"


def square(x: float, y: float, size: float = 100.0) -> shapely.Polygon:
    """A square with its south-west corner at (x, y) metres from the box origin."""
    return shapely.box(X0 + x, Y0 + y, X0 + x + size, Y0 + y + size)


def bow_tie(x: float, y: float, size: float = 100.0) -> shapely.Polygon:
    """A self-intersecting square (vertices in the wrong order): two triangles meeting at the centre."""
    x, y = X0 + x, Y0 + y
    return shapely.Polygon([(x, y), (x + size, y + size), (x + size, y), (x, y + size)])


def layer(geometries: list, labels: list, crs: object = contract.CHALLENGE_CRS_EPSG) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"label": labels}, geometry=geometries, crs=crs)


def rasterise(parcels: gpd.GeoDataFrame, **kwargs: object):
    return RasteriseReferenceTask(parcels, **kwargs).execute(build_eopatch(reference=False))


def masks(patch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return patch[contract.CULTIVATED], patch[contract.NOT_DECLARED], patch[contract.ALL_POLYS]


def assert_contract(patch) -> None:
    for feature, dtype in (
        (contract.CULTIVATED, bool),
        (contract.NOT_DECLARED, bool),
        (contract.ALL_POLYS, np.uint16),
    ):
        assert patch[feature].shape == SHAPE
        assert patch[feature].dtype == dtype


def assert_empty(patch) -> None:
    assert_contract(patch)
    cultivated, not_declared, all_polys = masks(patch)
    assert not cultivated.any() and not not_declared.any() and not all_polys.any()


@pytest.fixture
def three_squares() -> gpd.GeoDataFrame:
    """Cultivated maize (2) south-west, not declared (100) south-east, grass (1, not cultivated) north-west."""
    return layer([square(0, 0), square(100, 0), square(0, 100)], [2, 100, 1])


# --- the normal path ----------------------------------------------------------------------------------


def test_three_squares_exact_pixels(three_squares: gpd.GeoDataFrame) -> None:
    patch = rasterise(three_squares)
    assert_contract(patch)
    cultivated, not_declared, all_polys = (m[..., 0] for m in masks(patch))

    # x 2.5..97.5 m -> columns 1..38; y 2.5..97.5 m (south half) -> rows 41..78 from the north edge.
    expected = np.zeros((80, 80), dtype=bool)
    expected[41:79, 1:39] = True
    assert cultivated.sum() == SQUARE_PX == 1444
    np.testing.assert_array_equal(cultivated, expected)

    expected_nd = np.zeros((80, 80), dtype=bool)
    expected_nd[41:79, 41:79] = True
    np.testing.assert_array_equal(not_declared, expected_nd)

    assert all_polys[41:79, 1:39].tolist() == np.full((38, 38), 2).tolist()
    assert (all_polys[41:79, 41:79] == 100).all()
    assert (all_polys[1:39, 1:39] == 1).all()
    assert (all_polys > 0).sum() == 3 * SQUARE_PX
    assert set(np.unique(all_polys)) == {0, 1, 2, 100}
    # The 2.5 m buffer leaves a 5 m (2 px) gap between neighbouring parcels.
    assert not all_polys[:, 39:41].any() and not all_polys[39:41, :].any()


def test_parcels_from_the_eopatch_feature(three_squares: gpd.GeoDataFrame) -> None:
    patch = build_eopatch(reference=False)
    patch[contract.REFERENCE] = three_squares
    patch = RasteriseReferenceTask().execute(patch)
    np.testing.assert_array_equal(patch[contract.ALL_POLYS], rasterise(three_squares)[contract.ALL_POLYS])


def test_parcel_crossing_the_box_edge_is_clipped() -> None:
    # x -50..50 m, buffered to -47.5..47.5: 19 columns inside the box; y 2.5..97.5: 38 rows.
    cultivated = rasterise(layer([square(-50, 0)], [3]))[contract.CULTIVATED]
    assert cultivated.sum() == 19 * 38
    assert cultivated[41:79, 0:19].all()


def test_float_label_column_gives_integer_codes() -> None:
    patch = rasterise(layer([square(0, 0)], [2.0]))
    assert patch[contract.ALL_POLYS].dtype == np.uint16
    assert set(np.unique(patch[contract.ALL_POLYS])) == {0, 2}


def test_other_label_column() -> None:
    parcels = gpd.GeoDataFrame({"code": [100]}, geometry=[square(0, 0)], crs=contract.CHALLENGE_CRS_EPSG)
    assert rasterise(parcels, label_column="code")[contract.NOT_DECLARED].sum() == SQUARE_PX


# --- invalid geometries -------------------------------------------------------------------------------


def test_bow_tie_is_repaired_into_both_triangles(caplog: pytest.LogCaptureFixture) -> None:
    tie = bow_tie(50, 50)
    assert not tie.is_valid
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        cultivated = rasterise(layer([tie], [2]))[contract.CULTIVATED]
    assert "1 parcel(s) have invalid geometries" in caplog.text

    repaired = shapely.make_valid(tie)
    assert repaired.geom_type == "MultiPolygon" and len(repaired.geoms) == 2
    assert cultivated.sum() > 0
    np.testing.assert_array_equal(cultivated, rasterise(layer([repaired], [2]))[contract.CULTIVATED])
    # Both triangles are there: the pixel area is close to the area of the buffered repair ...
    area = repaired.buffer(-2.5).area
    assert abs(cultivated.sum() * PX_AREA - area) < 0.1 * area
    # ... and about twice what buffering the bow-tie as it is would keep (one triangle only).
    assert tie.buffer(-2.5).area < 0.55 * area
    half = cultivated[..., 0]
    assert half[:, :40].sum() > 0 and half[:, 40:].sum() > 0  # west and east triangle


def test_self_touching_ring_is_repaired(caplog: pytest.LogCaptureFixture) -> None:
    # A ring that touches itself at one vertex (a "figure 8" drawn as one ring): two 40 m squares.
    x, y = X0 + 20, Y0 + 20
    ring = shapely.Polygon(
        [(x, y), (x + 40, y), (x + 40, y + 40), (x + 80, y + 40), (x + 80, y + 80), (x + 40, y + 80),
         (x + 40, y + 40), (x, y + 40)]
    )  # fmt: skip
    assert not ring.is_valid
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        cultivated = rasterise(layer([ring], [7]))[contract.CULTIVATED]
    assert "invalid geometries" in caplog.text
    # Each 40 m square on the grid shrinks to 35 m: 14 x 14 px.
    assert cultivated.sum() == 2 * 14 * 14


def test_lines_and_points_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    geometries = [
        square(0, 0),
        shapely.LineString([(X0, Y0), (X0 + 100, Y0 + 100)]),
        shapely.Point(X0 + 1, Y0 + 1),
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        patch = rasterise(layer(geometries, [2, 3, 4]))
    assert "2 parcel(s) have no polygonal part" in caplog.text
    assert patch[contract.CULTIVATED].sum() == SQUARE_PX


def test_repair_keeps_only_polygonal_parts() -> None:
    # A square with a dangling spike: make_valid gives a polygon and a line; the line is dropped.
    x, y = X0, Y0
    spiky = shapely.Polygon(
        [(x, y), (x + 100, y), (x + 100, y + 100), (x + 150, y + 150), (x + 100, y + 100), (x, y + 100)]
    )
    assert not spiky.is_valid
    assert shapely.make_valid(spiky).geom_type == "GeometryCollection"
    assert rasterise(layer([spiky], [2]))[contract.CULTIVATED].sum() == SQUARE_PX


# --- empty input --------------------------------------------------------------------------------------


def test_empty_geometries_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    geometries = [square(0, 0), None, shapely.Polygon(), shapely.MultiPolygon()]
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        # Labels of dropped rows are not checked (None here).
        patch = rasterise(layer(geometries, [2, None, 1, 100]))
    assert "3 parcel(s) have empty or missing geometries" in caplog.text
    assert patch[contract.CULTIVATED].sum() == SQUARE_PX
    assert not patch[contract.NOT_DECLARED].any()


@pytest.mark.parametrize(
    "parcels",
    [
        pytest.param(layer([], []), id="no rows"),
        pytest.param(gpd.GeoDataFrame(geometry=[]), id="no rows, no CRS, no label column"),
        pytest.param(layer([None, shapely.Polygon()], [2, 3]), id="only empty geometries"),
    ],
)
def test_no_parcels_gives_empty_masks(parcels: gpd.GeoDataFrame, caplog: pytest.LogCaptureFixture) -> None:
    patch = build_eopatch()  # with (zero) reference masks already: they are replaced
    patch[contract.ALL_POLYS][:] = 5
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        patch = RasteriseReferenceTask(parcels).execute(patch)
    assert_empty(patch)
    assert "no parcels" in caplog.text


def test_empty_eopatch_feature_gives_empty_masks(caplog: pytest.LogCaptureFixture) -> None:
    patch = build_eopatch(reference=False)
    patch[contract.REFERENCE] = layer([], [])
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        assert_empty(RasteriseReferenceTask().execute(patch))
    assert "no parcels" in caplog.text


# --- CRS ----------------------------------------------------------------------------------------------


def test_parcels_without_crs_raise() -> None:
    with pytest.raises(ValueError, match="parcels have no CRS: set one"):
        rasterise(layer([square(0, 0)], [2], crs=None))


@pytest.mark.parametrize("epsg", [4326, 32634, 3857])
def test_parcels_in_another_crs_are_reprojected(
    three_squares: gpd.GeoDataFrame, epsg: int, caplog: pytest.LogCaptureFixture
) -> None:
    expected = rasterise(three_squares)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME), warnings.catch_warnings():
        # eo-learn warns when it reprojects itself: it must not, the task already did.
        warnings.simplefilter("error", EORuntimeWarning)
        patch = rasterise(three_squares.to_crs(epsg))
    assert "reprojecting the parcels" in caplog.text
    assert any(r.levelno == logging.INFO and "reprojecting" in r.getMessage() for r in caplog.records)
    for feature in (contract.CULTIVATED, contract.NOT_DECLARED, contract.ALL_POLYS):
        got, want = patch[feature] > 0, expected[feature] > 0
        iou = (got & want).sum() / (got | want).sum()
        assert iou > 0.98
    # The vertices survive the round trip to a few nm, and the buffered edges lie on pixel edges: exact.
    np.testing.assert_array_equal(patch[contract.ALL_POLYS], expected[contract.ALL_POLYS])
    assert_contract(patch)


@pytest.mark.parametrize("crs", [32633, "EPSG:32633", "+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs"])
def test_same_crs_is_not_reprojected(crs: object, caplog: pytest.LogCaptureFixture) -> None:
    parcels = layer([square(0, 0)], [2], crs=crs)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME), warnings.catch_warnings():
        warnings.simplefilter("error", EORuntimeWarning)
        patch = rasterise(parcels)
    assert "reprojecting" not in caplog.text
    assert patch[contract.CULTIVATED].sum() == SQUARE_PX


def test_parcels_outside_the_box_warn(caplog: pytest.LogCaptureFixture) -> None:
    # UTM coordinates labelled as EPSG:32634: the classic wrong-CRS mistake puts them ~700 km away.
    far = layer([square(0, 0)], [2], crs=32634)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        patch = rasterise(far)
    assert "no parcel intersects the box: check the CRS of the parcels" in caplog.text
    assert_empty(patch)


def test_parcel_layer_elsewhere_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        assert_empty(rasterise(layer([square(1000, 1000)], [2])))
    assert "no parcel intersects the box" in caplog.text


# --- label codes and other errors ---------------------------------------------------------------------


@pytest.mark.parametrize("missing", [np.nan, None])
def test_missing_label_codes_raise(missing: object) -> None:
    parcels = layer([square(0, 0), square(100, 0), square(0, 100)], [2, missing, missing])
    with pytest.raises(ValueError, match=r"2 parcel\(s\) have no label code \(NaN/None\) in column 'label'"):
        rasterise(parcels)


def test_non_integer_label_codes_raise() -> None:
    with pytest.raises(ValueError, match=r"1 parcel\(s\) have non-integer label codes in column 'label'"):
        rasterise(layer([square(0, 0), square(100, 0)], [2, 2.5]))
    with pytest.raises(ValueError, match="non-integer label codes"):
        rasterise(layer([square(0, 0)], ["maize"]))


def test_unknown_label_codes_raise() -> None:
    with pytest.raises(ValueError, match=r"1 parcel\(s\) have unknown label codes \[99\] in column 'label'"):
        rasterise(layer([square(0, 0), square(100, 0)], [2, 99]))


def test_missing_label_column_raises(three_squares: gpd.GeoDataFrame) -> None:
    with pytest.raises(ValueError, match="parcels have no 'code' column"):
        rasterise(three_squares, label_column="code")


def test_missing_vector_feature_raises() -> None:
    with pytest.raises(ValueError, match="no vector_timeless/REFERENCE feature"):
        RasteriseReferenceTask().execute(build_eopatch(reference=False))


def test_errors_leave_the_eopatch_untouched() -> None:
    patch = build_eopatch()
    before = {feature: patch[feature].copy() for feature in (contract.CULTIVATED, contract.ALL_POLYS)}
    patch[contract.CULTIVATED][:] = True
    before[contract.CULTIVATED][:] = True
    with pytest.raises(ValueError, match="no label code"):
        RasteriseReferenceTask(layer([square(0, 0), bow_tie(100, 100)], [2, np.nan])).execute(patch)
    for feature, array in before.items():
        np.testing.assert_array_equal(patch[feature], array)

    fresh = build_eopatch(reference=False)
    with pytest.raises(ValueError, match="unknown label codes"):
        RasteriseReferenceTask(layer([square(0, 0)], [99])).execute(fresh)
    assert not any(spec.feature in fresh for spec in contract.REFERENCE_FEATURES)


def test_failure_while_rasterising_writes_no_mask(
    three_squares: gpd.GeoDataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CULTIVATED is rasterised first; a failure on NOT_DECLARED must not leave it in the EOPatch."""
    original = VectorToRasterTask.execute
    calls = []

    def fail_second(self: VectorToRasterTask, eopatch):
        calls.append(self.raster_feature)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(self, eopatch)

    monkeypatch.setattr(VectorToRasterTask, "execute", fail_second)
    patch = build_eopatch(reference=False)
    with pytest.raises(RuntimeError, match="disk full"):
        RasteriseReferenceTask(three_squares).execute(patch)
    assert calls[0] == contract.CULTIVATED
    assert not any(spec.feature in patch for spec in contract.REFERENCE_FEATURES)

"""read_parcels_file / VectorParcelsTask: every format written from simulator parcels and read back.

The files hold the simulator parcels of box_bbox(0, 60) grown by 300 m, in EPSG:3035 (EPSG:4326
for GeoJSON); the box is in EPSG:32633. Expected values: geopandas ``intersects`` on the simulator
parcels.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.sources.simulator import box_bbox, generate_landscape
from s2agri.tasks.sources.vector import VectorParcelsTask, read_parcels_file

BBOX = box_bbox(0, 60)
UTM = contract.CHALLENGE_CRS_EPSG
SHAPEFILE_IDS = 10**15  #: a Shapefile keeps 18 digits (simulator ids have 19): ids modulo this there
FORMATS = {  # suffix -> file CRS
    ".gpkg": 3035,
    ".parquet": 3035,
    ".geoparquet": 3035,
    ".fgb": 3035,
    ".shp": 3035,
    ".shp.zip": 3035,
    ".geojson": 4326,
    ".json": 4326,
}
SUPPORTED = ".fgb, .geojson, .geoparquet, .gpkg, .json, .parquet, .shp, .shp.zip"


@pytest.fixture(scope="module")
def parcels() -> gpd.GeoDataFrame:
    """Simulator parcels (EPSG:32633) around the box, more than the box holds."""
    frame = generate_landscape(0, tuple(BBOX), margin=300.0)[["id", "label", "geometry"]]
    assert len(frame) > len(frame[frame.intersects(BBOX.geometry)])
    return frame


def write(frame: gpd.GeoDataFrame, path: Path, crs: object | None = None) -> Path:
    """``frame`` (reprojected to ``crs``) in the format its suffix names."""
    if crs is not None:
        frame = frame.to_crs(crs)
    name = path.name.lower()
    if name.endswith((".parquet", ".geoparquet")):
        frame.to_parquet(path)
    elif name.endswith(".shp.zip"):
        inner = path.parent / "zipped" / path.name.removesuffix(".zip")
        inner.parent.mkdir(exist_ok=True)
        frame.to_file(inner, engine="pyogrio")
        with zipfile.ZipFile(path, "w") as archive:
            for part in inner.parent.glob(f"{inner.stem}.*"):
                archive.write(part, part.name)
    else:
        driver = "GeoJSON" if name.endswith(".json") else None
        frame.to_file(path, engine="pyogrio", driver=driver)
    return path


def without_crs(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=np.asarray(frame.geometry.values))


def assert_parcels_of_the_box(result: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame) -> None:
    expected = parcels[parcels.intersects(BBOX.geometry)].set_index("id")
    assert list(result.columns) == ["id", "label", "geometry"]
    assert result["id"].dtype == np.int64 and result["label"].dtype == np.int64
    assert result.crs == BBOX.crs.pyproj_crs()
    assert shapely.is_valid(result.geometry.to_numpy()).all()
    assert sorted(result["id"]) == sorted(expected.index)
    by_id = result.set_index("id").loc[expected.index]
    assert (by_id["label"] == expected["label"]).all()
    np.testing.assert_allclose(by_id.area, expected.area, rtol=1e-3)


# --- every format ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_every_format_gives_the_parcels_of_the_box(
    tmp_path: Path, parcels: gpd.GeoDataFrame, suffix: str
) -> None:
    if suffix.startswith(".shp"):
        parcels = parcels.assign(id=parcels["id"] % SHAPEFILE_IDS)
        assert parcels["id"].is_unique
    path = write(parcels, tmp_path / f"parcels{suffix}", FORMATS[suffix])
    assert_parcels_of_the_box(read_parcels_file(path, BBOX), parcels)


def test_task_fills_the_reference_feature(tmp_path: Path, parcels: gpd.GeoDataFrame) -> None:
    path = write(parcels, tmp_path / "parcels.gpkg", 3035)
    patch = VectorParcelsTask(path).execute(bbox=BBOX)
    assert patch.bbox == BBOX
    assert_parcels_of_the_box(patch[contract.REFERENCE], parcels)


def test_clip_cuts_the_parcels_to_the_box(tmp_path: Path, parcels: gpd.GeoDataFrame) -> None:
    path = write(parcels, tmp_path / "parcels.fgb", 3035)
    result = read_parcels_file(path, BBOX, clip=True)
    cut = parcels.set_index("id").geometry.intersection(BBOX.geometry)
    cut = cut[cut.area > 0]
    assert result.crs == BBOX.crs.pyproj_crs()
    assert result.within(BBOX.geometry.buffer(1e-6)).all()
    assert sorted(result["id"]) == sorted(cut.index)
    np.testing.assert_allclose(result.set_index("id").loc[cut.index].area, cut.area, rtol=1e-3)


def test_without_a_box_every_parcel_in_the_file_crs(tmp_path: Path, parcels: gpd.GeoDataFrame) -> None:
    path = write(parcels, tmp_path / "parcels.parquet", 3035)
    result = read_parcels_file(path)
    assert result.crs.to_epsg() == 3035
    assert sorted(result["id"]) == sorted(parcels["id"])


def test_layer_choice(tmp_path: Path, parcels: gpd.GeoDataFrame) -> None:
    path = tmp_path / "two.gpkg"
    fields = parcels[parcels["label"] != 2000]
    fields.to_file(path, layer="fields", engine="pyogrio")
    parcels[parcels["label"] == 2000].to_file(path, layer="forest", engine="pyogrio")

    assert_parcels_of_the_box(read_parcels_file(path, BBOX, layer="fields"), fields)
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX)
    assert str(error.value) == f"parcel file {path} has 2 layers (fields, forest): pass layer= naming one"
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX, layer="roads")
    assert str(error.value) == f"parcel file {path} has no layer 'roads': its layers are fields, forest"


# --- labels and ids -------------------------------------------------------------------------------------


def test_label_column_missing_or_renamed(tmp_path: Path, parcels: gpd.GeoDataFrame) -> None:
    path = write(parcels.rename(columns={"label": "crop_code"}), tmp_path / "crops.gpkg", 3035)
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX)
    assert str(error.value) == (
        f"parcel file {path} has no 'label' column (columns: id, crop_code): "
        "pass label_column= naming the column with the label codes"
    )
    assert_parcels_of_the_box(read_parcels_file(path, BBOX, label_column="crop_code"), parcels)


def test_integral_float_and_string_codes_are_converted(tmp_path: Path) -> None:
    squares = [
        shapely.box(BBOX.min_x + 100 * i, BBOX.min_y, BBOX.min_x + 100 * i + 50, BBOX.min_y + 50)
        for i in range(3)
    ]
    frame = gpd.GeoDataFrame({"id": ["7", "8", "9"], "label": ["2", "3.0", "100"]}, geometry=squares, crs=UTM)
    path = write(frame, tmp_path / "text.geojson", 4326)
    result = read_parcels_file(path, BBOX)
    assert result["id"].tolist() == [7, 8, 9] and result["label"].tolist() == [2, 3, 100]
    assert result["label"].dtype == np.int64

    floats = frame.assign(label=[2.0, 3.0, 100.0])
    result = read_parcels_file(write(floats, tmp_path / "floats.fgb"), BBOX)
    assert result["label"].tolist() == [2, 3, 100] and result["label"].dtype == np.int64


def test_non_integer_codes_are_an_error(tmp_path: Path) -> None:
    squares = [
        shapely.box(BBOX.min_x + 100 * i, BBOX.min_y, BBOX.min_x + 100 * i + 50, BBOX.min_y + 50)
        for i in range(3)
    ]
    frame = gpd.GeoDataFrame({"id": [1, 2, 3], "label": ["2", "2.5", "maize"]}, geometry=squares, crs=UTM)
    path = write(frame, tmp_path / "bad.gpkg")
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX)
    assert str(error.value) == (
        f"parcel file {path}: 2 parcel(s) have non-integer label codes in column 'label' (e.g. ['2.5', 'maize']): "
        "use the integer challenge codes of s2agri.tasks.contract"
    )


def test_ids_that_lost_digits_are_an_error(tmp_path: Path, parcels: gpd.GeoDataFrame) -> None:
    path = write(parcels, tmp_path / "parcels.shp", 3035)  # 19-digit ids: stored as floating point
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX)
    assert str(error.value) == (
        f"parcel file {path}: ids in column 'id' are floating point numbers beyond 2^53, which have lost "
        "digits: store them as integers (a Shapefile holds at most 18 digits)"
    )


# --- invalid geometries ---------------------------------------------------------------------------------


def _invalid_layer() -> tuple[gpd.GeoDataFrame, list[shapely.Geometry]]:
    x, y = BBOX.min_x + 100, BBOX.min_y + 100
    square = shapely.box(x, y, x + 100, y + 100)
    bow_tie = shapely.Polygon([(x + 200, y), (x + 300, y + 100), (x + 300, y), (x + 200, y + 100)])
    # The shell touches itself at (x + 50, y + 250): two lobes sharing one vertex.
    touching = shapely.Polygon(
        [
            (x, y + 200),
            (x + 100, y + 200),
            (x + 50, y + 250),
            (x + 100, y + 300),
            (x, y + 300),
            (x + 50, y + 250),
        ]
    )
    assert not bow_tie.is_valid and not touching.is_valid and square.is_valid
    frame = gpd.GeoDataFrame(
        {"id": [1, 2, 3], "label": [2, 3, 1]}, geometry=[square, bow_tie, touching], crs=UTM
    )
    return frame, [square, bow_tie, touching]


def test_invalid_geometries_are_repaired_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame, geometries = _invalid_layer()
    path = write(frame, tmp_path / "invalid.gpkg")
    with caplog.at_level(logging.WARNING):
        result = read_parcels_file(path, BBOX)
    assert "2 parcel(s) have invalid geometries" in caplog.text
    assert result["id"].tolist() == [1, 2, 3]
    assert shapely.is_valid(result.geometry.to_numpy()).all()
    assert set(result.geom_type) <= {"Polygon", "MultiPolygon"}
    expected_areas = [shapely.make_valid(g).area for g in geometries]
    np.testing.assert_allclose(result.area, expected_areas, rtol=1e-9)
    assert result.area.iloc[1] == pytest.approx(2 * 100 * 100 / 4)  # both triangles of the bow-tie kept


def test_invalid_geometries_reported_with_their_ids(tmp_path: Path) -> None:
    frame, _ = _invalid_layer()
    path = write(frame, tmp_path / "invalid.gpkg")
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX, on_invalid="error")
    assert str(error.value) == (
        f"parcel file {path}: 2 parcel(s) have invalid geometries (ids 2, 3): "
        "repair them (e.g. ogr2ogr -makevalid) or pass on_invalid='repair'"
    )


# --- bad files ------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
@pytest.mark.parametrize("suffix", [".shp", ".fgb", ".gpkg", ".parquet"])
def test_file_without_crs(tmp_path: Path, parcels: gpd.GeoDataFrame, suffix: str) -> None:
    if suffix == ".shp":
        parcels = parcels.assign(id=parcels["id"] % SHAPEFILE_IDS)
    path = write(without_crs(parcels), tmp_path / f"nocrs{suffix}")
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX)
    assert str(error.value) == (
        f"parcel file {path} has no CRS: set it, e.g. ogr2ogr -a_srs EPSG:<code> with_crs{suffix} nocrs{suffix}"
    )


def test_missing_file_and_unsupported_format(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gpkg"
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(missing, BBOX)
    assert str(error.value) == f"parcel file {missing} not found: check the path"

    table = tmp_path / "parcels.csv"
    table.write_text("id,label\n1,2\n")
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(table, BBOX)
    assert str(error.value) == f"parcel file {table} has an unsupported format '.csv': use one of {SUPPORTED}"


def test_bad_options(tmp_path: Path, parcels: gpd.GeoDataFrame) -> None:
    path = write(parcels, tmp_path / "parcels.parquet", 3035)
    with pytest.raises(S2AgriInputError) as error:
        read_parcels_file(path, BBOX, layer="fields")
    assert str(error.value) == f"parcel file {path} is GeoParquet, which has no layers: leave layer= unset"
    with pytest.raises(S2AgriInputError) as error:
        VectorParcelsTask(path, on_invalid="ignore")
    assert str(error.value) == "on_invalid='ignore': give 'repair' or 'error'"

"""Parcel zonal statistics, PARCEL_STATS and GIS attributes (s2agri.tasks.zonal)."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from eolearn.core import EOPatch
from sentinelhub import CRS, BBox
from shapely.geometry import box

from s2agri.tasks import contract
from s2agri.tasks.masks import REFLECTANCE, VALID, ReflectanceTask, ValidMaskTask
from s2agri.tasks.parcel_series import parcel_model_inputs, parcel_targets
from s2agri.tasks.sources.simulator import box_bbox, simulate_eopatch
from s2agri.tasks.zonal import (
    DATES_KEY,
    PARCEL_STATS,
    ZonalStatisticsTask,
    parcel_dates,
    parcel_index_map,
    read_parcel_series,
    zonal_attributes,
    zonal_statistics,
)

NAN = np.nan


# --------------------------------------------------------------------------- hand-made example
def hand_example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 parcels on a 4x4 grid, 3 frames, 2 channels (channel 1 = 2 x channel 0).

    Parcel 0 = pixels 0, 1, 4, 5; parcel 1 = pixels 2, 3, 6, 7, 10, 11; the rest is outside and
    holds 999 (must be ignored). Frame t adds 10 t. Frame 1: pixel 0 cloudy. Frame 2: all of
    parcel 1 cloudy, and pixel 5 holds NaN (ignored although valid).
    """
    index_map = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, -1]], dtype=np.int32)
    base = np.arange(16, dtype=np.float64).reshape(4, 4)
    base[index_map < 0] = 999.0
    channel0 = np.stack([base + 10 * t for t in range(3)])
    bands = np.stack([channel0, 2 * channel0], axis=-1).astype(np.float32)
    valid = np.ones((3, 4, 4, 1), dtype=bool)
    valid[1, 0, 0] = False
    valid[2][index_map == 1] = False
    bands[2, 1, 1, 0] = np.nan
    return bands, valid, index_map


def test_zonal_statistics_hand_example() -> None:
    bands, valid, index_map = hand_example()
    mean, std, counts = zonal_statistics(bands, valid, index_map, 2)
    assert mean.shape == std.shape == (2, 3, 2) and counts.shape == (2, 3)
    assert mean.dtype == std.dtype == np.float32 and counts.dtype == np.int32
    np.testing.assert_array_equal(counts, [[4, 3, 3], [6, 6, 0]])
    # parcel 0: frame 0 {0, 1, 4, 5}; frame 1 {11, 14, 15} (pixel 0 cloudy); frame 2 {20, 21, 24} (pixel 5 NaN)
    # parcel 1: frame 0 {2, 3, 6, 7, 10, 11}, frame 1 the same + 10, frame 2 fully clouded
    expected_mean = np.array([[2.5, 40 / 3, 65 / 3], [6.5, 16.5, NAN]])
    expected_std = np.array(
        [
            [math.sqrt(17 / 4), math.sqrt(26) / 3, math.sqrt(26) / 3],
            [math.sqrt(65.5 / 6), math.sqrt(65.5 / 6), NAN],
        ]
    )
    np.testing.assert_allclose(mean[..., 0], expected_mean, rtol=1e-6)
    np.testing.assert_allclose(mean[..., 1], 2 * expected_mean, rtol=1e-6)
    np.testing.assert_allclose(std[..., 0], expected_std, rtol=1e-6)
    np.testing.assert_allclose(std[..., 1], 2 * expected_std, rtol=1e-6)
    assert np.isnan(mean[1, 2]).all() and np.isnan(std[1, 2]).all()  # fully clouded at frame 2


def test_zonal_statistics_chunks_give_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    bands, valid, index_map = hand_example()
    whole = zonal_statistics(bands, valid[..., 0], index_map, 3)  # a parcel without pixels: all NaN
    monkeypatch.setattr("s2agri.tasks.zonal.CHUNK_ELEMENTS", 1)  # one frame per chunk
    chunked = zonal_statistics(bands, valid, index_map, 3)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(whole[0][2]).all() and (whole[2][2] == 0).all()


def test_zonal_statistics_rejects_bad_input() -> None:
    bands, valid, index_map = hand_example()
    with pytest.raises(ValueError, match=r"-1 \.\. 0"):
        zonal_statistics(bands, valid, index_map, 1)
    with pytest.raises(ValueError, match="valid has shape"):
        zonal_statistics(bands, valid[:2], index_map, 2)


# --------------------------------------------------------------------------- index map
def test_parcel_index_map_pixel_centres_and_buffer() -> None:
    bbox = BBox((500000.0, 5100000.0, 500040.0, 5100040.0), CRS(32633))  # 4 x 4 px at 10 m
    x0, y0 = 500000.0, 5100000.0
    parcels = gpd.GeoDataFrame(
        {"id": [7, 8, 9]},
        geometry=[
            box(x0, y0 + 20, x0 + 20, y0 + 40),  # top-left 2 x 2 pixels
            box(x0 + 31, y0 + 1, x0 + 34, y0 + 4),  # covers no pixel centre
            box(x0 + 20, y0, x0 + 40, y0 + 20),  # bottom-right 2 x 2 pixels
        ],
        crs="EPSG:32633",
    )
    index_map = parcel_index_map(parcels, bbox, (4, 4))
    expected = np.array([[0, 0, -1, -1], [0, 0, -1, -1], [-1, -1, 2, 2], [-1, -1, 2, 2]])
    np.testing.assert_array_equal(index_map, expected)
    assert index_map.dtype == np.int32
    # -2.5 m keeps the centres (5 and 15 m in), -6 m leaves none
    np.testing.assert_array_equal(parcel_index_map(parcels, bbox, (4, 4), buffer=-2.5), expected)
    assert (parcel_index_map(parcels, bbox, (4, 4), buffer=-6.0) == -1).all()
    # another CRS is reprojected to the box CRS
    np.testing.assert_array_equal(parcel_index_map(parcels.to_crs(4326), bbox, (4, 4)), expected)
    with pytest.raises(ValueError, match="no CRS"):
        parcel_index_map(gpd.GeoDataFrame(geometry=list(parcels.geometry)), bbox, (4, 4))


# --------------------------------------------------------------------------- simulated box
@pytest.fixture(scope="module")
def sim_box() -> EOPatch:
    eopatch = simulate_eopatch(box_bbox(0, 60), 0, 5, 5)
    eopatch = ValidMaskTask().execute(ReflectanceTask().execute(eopatch))
    return ZonalStatisticsTask().execute(eopatch)


def test_task_on_simulated_box(sim_box: EOPatch) -> None:
    parcels = sim_box[contract.REFERENCE]
    refl, valid = sim_box[REFLECTANCE], sim_box[VALID][..., 0]
    index_map = parcel_index_map(parcels, sim_box.bbox, refl.shape[1:3])
    present = np.unique(index_map[index_map >= 0])
    table = sim_box[PARCEL_STATS]
    mean, std, counts = read_parcel_series(table)
    n_frames, n_bands = refl.shape[0], len(contract.BAND_NAMES)
    assert len(present) < len(parcels)  # some parcels are too small for a 10 m pixel centre
    assert mean.shape == std.shape == (len(present), n_frames, n_bands)
    np.testing.assert_array_equal(table["id"], parcels["id"].iloc[present])
    np.testing.assert_array_equal(table["n_pixels"], np.bincount(index_map[index_map >= 0])[present])
    classes = {"cultivated": 1, "not_cultivated": 0, "not_declared": -1}
    np.testing.assert_array_equal(
        table["cultivated"],
        [classes[contract.label_class(int(code))] for code in parcels["label"].iloc[present]],
    )
    assert table.crs == sim_box.bbox.crs.pyproj_crs()
    assert table.geometry.geom_equals(parcels.geometry.iloc[present].reset_index(drop=True)).all()
    assert sim_box.meta_info[DATES_KEY] == [t.isoformat() for t in sim_box.timestamps]
    # two parcels, the largest and one with a cloudy date, against a direct numpy computation
    largest = int(np.argmax(table["n_pixels"]))
    partly = np.flatnonzero((counts < table["n_pixels"].to_numpy()[:, None]).any(axis=1))
    rows = [largest, int(partly[0]) if partly.size else 0]
    for row in rows:
        pixels = index_map == present[row]
        for t in range(n_frames):
            values = refl[t][pixels & valid[t]].astype(np.float64)
            assert counts[row, t] == len(values)
            if len(values):
                np.testing.assert_allclose(mean[row, t], values.mean(axis=0), rtol=1e-5)
                np.testing.assert_allclose(std[row, t], values.std(axis=0), rtol=1e-4, atol=1e-7)
            else:
                assert np.isnan(mean[row, t]).all()


def test_parcel_stats_survive_save_and_load(sim_box: EOPatch, tmp_path: Path) -> None:
    sim_box.save(str(tmp_path / "box"))
    loaded = EOPatch.load(str(tmp_path / "box"))
    for a, b in zip(
        read_parcel_series(sim_box[PARCEL_STATS]), read_parcel_series(loaded[PARCEL_STATS]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert parcel_dates(loaded) == list(sim_box.timestamps)
    np.testing.assert_array_equal(loaded[PARCEL_STATS]["cultivated"], sim_box[PARCEL_STATS]["cultivated"])


def test_model_inputs_and_targets(sim_box: EOPatch) -> None:
    table = sim_box[PARCEL_STATS]
    dates = parcel_dates(sim_box)
    mean, std, _ = read_parcel_series(table)
    x, doy = parcel_model_inputs(table, dates)
    assert x.shape == (len(table), len(dates), 24) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., :12], mean)
    np.testing.assert_array_equal(x[..., 12:], std)
    np.testing.assert_array_equal(doy, [d.timetuple().tm_yday for d in dates])
    monthly, mdoy = parcel_model_inputs(table, dates, monthly=True, fill=True)
    assert monthly.shape == (len(table), 6, 24) and not np.isnan(monthly).any()
    np.testing.assert_array_equal(mdoy, [74, 105, 135, 166, 196, 227])  # the 15th of March .. August 2019
    y, weight = parcel_targets(table)
    np.testing.assert_array_equal(y[:, 0], table["cultivated"] == 1)
    np.testing.assert_array_equal(weight[:, 0], table["cultivated"] >= 0)


def test_task_without_labels_and_without_parcels(sim_box: EOPatch) -> None:
    patch = sim_box.copy()
    patch[contract.REFERENCE] = sim_box[contract.REFERENCE][["geometry"]]
    table = ZonalStatisticsTask().execute(patch)[PARCEL_STATS]
    assert (table["cultivated"] == -1).all() and (table["label"] == -1).all()
    empty = gpd.GeoDataFrame({"id": [], "label": []}, geometry=[], crs="EPSG:32633")
    table = ZonalStatisticsTask(empty).execute(sim_box.copy())[PARCEL_STATS]
    assert len(table) == 0 and read_parcel_series(table)[0].shape == (0, len(sim_box.timestamps), 12)


# --------------------------------------------------------------------------- fill, monthly bins
def test_zonal_attributes_names_values_and_files(sim_box: EOPatch, tmp_path: Path) -> None:
    table = sim_box[PARCEL_STATS]
    dates = parcel_dates(sim_box)
    attributes = zonal_attributes(table, dates)
    names = [c for c in attributes.columns if c != "geometry"]
    assert all(len(name) <= 10 for name in names)
    assert {"id", "label", "cultivated", "n_pixels", "B04m03", "B8As05", "ndates08"} <= set(names)
    assert len(attributes) == len(table) and attributes.crs == table.crs
    # pooled monthly mean / std = those of every valid pixel observation of the month
    refl, valid = sim_box[REFLECTANCE], sim_box[VALID][..., 0]
    index_map = parcel_index_map(sim_box[contract.REFERENCE], sim_box.bbox, refl.shape[1:3])
    present = np.unique(index_map[index_map >= 0])
    months = np.array([d.month for d in dates])
    month = int(np.bincount(months).argmax())  # the month with the most frames
    row = int(np.argmax(table["n_pixels"]))
    frames = np.flatnonzero(months == month)
    pixels = np.concatenate([refl[t][(index_map == present[row]) & valid[t]] for t in frames]).astype(
        np.float64
    )
    band = contract.BAND_INDEX["B08"]
    np.testing.assert_allclose(attributes[f"B08m{month:02d}"].iloc[row], pixels[:, band].mean(), rtol=1e-5)
    np.testing.assert_allclose(attributes[f"B08s{month:02d}"].iloc[row], pixels[:, band].std(), rtol=1e-3)
    for driver, name in (("GPKG", "parcels.gpkg"), ("ESRI Shapefile", "parcels.shp")):
        path = tmp_path / name
        attributes.to_file(path, driver=driver)
        back = gpd.read_file(path)
        assert list(back.columns) == list(attributes.columns)
        assert back.crs == attributes.crs and len(back) == len(attributes)
        np.testing.assert_array_equal(back["id"], attributes["id"])
        np.testing.assert_allclose(
            back["B04m04"].to_numpy(dtype=float), attributes["B04m04"].to_numpy(dtype=float), rtol=1e-12
        )
        assert back.geometry.geom_equals_exact(attributes.geometry, tolerance=1e-6).all()

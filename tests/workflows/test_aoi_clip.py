"""Clipping region outputs to the AOI (s2agri.workflows.aoi_clip): hand-computed parcels and pixels."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from s2agri.workflows.aoi_clip import MASK_NODATA, aoi_area, clip_parcels, clip_raster

AOI = shapely.Polygon([(0, 0), (100, 0), (100, 100), (0, 100)])


def _parcels(*geometries: shapely.Geometry) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "parcel_id": [f"p{i}" for i in range(len(geometries))],
            "box_ids": "b",
            "area_m2": shapely.area(geometries),
            "perimeter_m": shapely.length(geometries),
            "mean_proba": 0.7,
        },
        geometry=list(geometries),
        crs=32633,
    )


def test_clip_parcels_keeps_inside_cuts_across_and_drops_outside_and_slivers() -> None:
    parcels = _parcels(
        shapely.box(10, 10, 30, 30),  # inside: unchanged
        shapely.box(90, 10, 130, 40),  # across the east edge: 10 x 30 inside
        shapely.box(200, 0, 240, 40),  # outside: dropped
        shapely.box(99, 50, 140, 60),  # across, 1 x 10 = 10 m2 inside: a sliver below 20 m2
        shapely.box(100, 70, 120, 90),  # touches the outline only: dropped
    )
    area = aoi_area(gpd.GeoDataFrame(geometry=[AOI], crs=32633), "EPSG:32633")
    clipped = clip_parcels(parcels, area, min_area_m2=20.0)
    assert list(clipped["parcel_id"]) == ["p0", "p1"]
    assert shapely.equals(clipped.geometry.values[0], shapely.box(10, 10, 30, 30))
    assert shapely.equals(clipped.geometry.values[1], shapely.box(90, 10, 100, 40))
    np.testing.assert_allclose(clipped["area_m2"], [400.0, 300.0])
    np.testing.assert_allclose(clipped["perimeter_m"], [80.0, 80.0])
    assert list(clipped["mean_proba"]) == [0.7, 0.7] and clipped.crs.to_epsg() == 32633
    assert clipped.geometry.geom_type.tolist() == ["Polygon", "Polygon"] and clipped.is_valid.all()


def test_aoi_area_reprojects_the_aoi() -> None:
    wgs84 = gpd.GeoDataFrame(geometry=[AOI], crs=32633).to_crs(4326)
    area = aoi_area(wgs84, 32633)
    assert area.area == pytest.approx(10000.0, rel=1e-6)


def _tif(path: Path, data: np.ndarray, nodata: float | None) -> Path:
    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(0, 100, 25, 25),  # 4 x 4 pixels of 25 m over the AOI square
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.update_tags(PRED_MODEL="m")
    return path


def test_clip_raster_marks_pixels_outside_and_unobserved_as_nodata(tmp_path: Path) -> None:
    mask = _tif(tmp_path / "box.tif", np.ones((4, 4), np.uint8), None)
    proba_data = np.full((4, 4), 200, np.uint8)
    proba_data[3, 3] = 255  # unobserved
    proba = _tif(tmp_path / "box_proba.tif", proba_data, 255)
    # x + y < 110: pixel (r, c) has its centre at ((c + 0.5) 25, 100 - (r + 0.5) 25), inside when c <= r
    triangle = shapely.Polygon([(0, 0), (110, 0), (0, 110)])

    out = clip_raster(
        mask, tmp_path / "tiles" / "box.tif", triangle, nodata=MASK_NODATA, unobserved_from=proba
    )

    with rasterio.open(out) as src:
        got, nodata, tags = src.read(1), src.nodata, src.tags()
    rows, cols = np.indices((4, 4))
    expected = np.where(cols <= rows, 1, MASK_NODATA).astype(np.uint8)
    expected[3, 3] = MASK_NODATA  # unobserved in the probability raster
    np.testing.assert_array_equal(got, expected)
    assert nodata == MASK_NODATA and tags["PRED_MODEL"] == "m"
    assert not [p for p in (tmp_path / "tiles").iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="has no nodata value"):
        clip_raster(mask, tmp_path / "x.tif", triangle)
    kept = clip_raster(proba, tmp_path / "p.tif", AOI)  # the source's nodata; all inside: unchanged
    with rasterio.open(kept) as src:
        np.testing.assert_array_equal(src.read(1), proba_data)

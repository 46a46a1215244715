"""GeoParquet 1.1 export of parcel layers: bbox covering column, metadata, row-group statistics."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pyproj
import shapely

from s2agri.tasks.vector_export import GEOPARQUET_VERSION, PARQUET_ROW_GROUP, write_vector
from s2agri.tasks.vectorise import empty_parcels


def _parcels(n: int) -> gpd.GeoDataFrame:
    x = 500000.0 + 10.0 * np.arange(n)
    geometries = shapely.box(x, 5100000.0, x + 7.5, 5100000.0 + 2.5 * (1 + np.arange(n) % 3))
    return gpd.GeoDataFrame(
        {"parcel_id": [f"p{i}" for i in range(n)], "area_m2": shapely.area(geometries)},
        geometry=geometries,
        crs=32633,
    )


def test_geoparquet_declares_a_bbox_covering_and_round_trips(tmp_path: Path) -> None:
    parcels = _parcels(PARQUET_ROW_GROUP + 5)
    path = tmp_path / "parcels.parquet"
    write_vector(parcels, path)

    table = pq.read_table(path)
    geo = json.loads(table.schema.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == GEOPARQUET_VERSION == "1.1.0" and geo["primary_column"] == "geometry"
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    assert pyproj.CRS.from_json_dict(column["crs"]).to_epsg() == 32633
    np.testing.assert_allclose(column["bbox"], parcels.total_bounds)
    bbox = table.column("bbox").combine_chunks()
    got = np.column_stack([bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")])
    np.testing.assert_array_equal(got, shapely.bounds(parcels.geometry.values))
    # two row groups whose xmin statistics let a reader skip the first for an eastern query
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 2
    xmin_index = [meta.schema.column(i).path for i in range(meta.num_columns)].index("bbox.xmin")
    first, second = (meta.row_group(g).column(xmin_index).statistics for g in range(2))
    assert first.max < second.min

    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 32633 and list(back["parcel_id"]) == list(parcels["parcel_id"])
    assert shapely.equals(back.geometry.values, parcels.geometry.values).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_empty_layer_writes_a_valid_geoparquet(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    write_vector(empty_parcels(32633), path)
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["columns"]["geometry"]["geometry_types"] == [] and "bbox" not in geo["columns"]["geometry"]
    back = gpd.read_parquet(path)
    assert len(back) == 0 and back.crs.to_epsg() == 32633

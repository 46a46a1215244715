"""Vector layers to GIS files: the format from the extension, every file written atomically.

``.gpkg`` (GeoPackage 1.2, named layer), ``.geojson``/``.json`` (RFC 7946: reprojected to WGS84),
``.fgb`` (FlatGeobuf), ``.parquet`` (GeoParquet 1.1 with a ``bbox`` covering column, so readers can
skip row groups by extent) and ``.shp`` (ESRI Shapefile; ``perimeter_m`` is ``perim_m`` there, dBASE
names have 10 characters). Every file is written under a temporary name and renamed into place (for a
Shapefile, each of its side files).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from .atomic_io import atomic_path
from .errors import S2AgriInputError
from .outputs import GPKG_VERSION

LOGGER = logging.getLogger(__name__)


#: File extension -> (OGR driver, write with GeoDataFrame.to_parquet instead of to_file).
VECTOR_FORMATS: dict[str, tuple[str, bool]] = {
    ".gpkg": ("GPKG", False),
    ".geojson": ("GeoJSON", False),
    ".json": ("GeoJSON", False),
    ".fgb": ("FlatGeobuf", False),
    ".parquet": ("GeoParquet", True),
    ".shp": ("ESRI Shapefile", False),
}
_SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
#: Shapefile (dBASE) field names have at most 10 characters: longer parcel columns get these names.
SHAPEFILE_COLUMNS = {"perimeter_m": "perim_m"}


def vector_format(path: Path) -> tuple[str, bool]:
    """The driver for ``path`` from its extension; an input error lists the supported ones."""
    try:
        return VECTOR_FORMATS[path.suffix.lower()]
    except KeyError:
        raise S2AgriInputError(
            f"{path}: unknown vector format {path.suffix!r}: use one of {', '.join(VECTOR_FORMATS)}"
        ) from None


#: GeoParquet version written (1.1: the ``covering`` bbox column).
GEOPARQUET_VERSION = "1.1.0"
#: Rows per Parquet row group: small enough that the bbox statistics let readers skip groups.
PARQUET_ROW_GROUP = 4096


def geoparquet_table(frame: gpd.GeoDataFrame) -> pa.Table:
    """GeoParquet 1.1 table of ``frame``: WKB geometry, a ``bbox`` struct column (xmin, ymin, xmax,
    ymax; float64) declared as the geometry's covering, and the ``geo`` metadata (CRS as PROJJSON)."""
    geometry = frame.geometry.values
    bounds = shapely.bounds(np.asarray(geometry, dtype=object))
    attributes = pd.DataFrame(frame.drop(columns=frame.geometry.name))
    table = pa.Table.from_pandas(attributes, preserve_index=False)
    bbox = pa.StructArray.from_arrays(
        [pa.array(bounds[:, i], pa.float64()) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"]
    )
    table = table.append_column("geometry", pa.array(shapely.to_wkb(np.asarray(geometry)), pa.binary()))
    table = table.append_column("bbox", bbox)
    finite = bounds[np.isfinite(bounds).all(axis=1)]
    column = {
        "encoding": "WKB",
        "geometry_types": _type_names(geometry),
        "bbox": [*finite[:, :2].min(axis=0).tolist(), *finite[:, 2:].max(axis=0).tolist()]
        if len(finite)
        else [],
        "covering": {"bbox": {key: ["bbox", key] for key in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if frame.crs is not None:
        column["crs"] = frame.crs.to_json_dict()
    if not column["bbox"]:
        del column["bbox"]
    geo = {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}
    metadata = dict(table.schema.metadata or {})
    metadata[b"geo"] = json.dumps(geo).encode()
    return table.replace_schema_metadata(metadata)


def _type_names(geometry: Iterable[Any]) -> list[str]:
    return sorted({geom.geom_type for geom in geometry if geom is not None and not geom.is_empty})


def write_vector(parcels: gpd.GeoDataFrame, path: Path, layer: str = "parcels") -> None:
    """Write ``parcels`` to ``path`` in the format of its extension, atomically per file."""
    driver, parquet = vector_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if parquet:
        with atomic_path(path) as tmp:
            pq.write_table(geoparquet_table(parcels), tmp, row_group_size=PARQUET_ROW_GROUP)
    elif driver == "ESRI Shapefile":
        renamed = parcels.rename(columns=SHAPEFILE_COLUMNS)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.tmp-") as tmp_dir:
            renamed.to_file(Path(tmp_dir) / path.name, driver=driver, engine="pyogrio")
            for suffix in _SHAPEFILE_PARTS:
                part = Path(tmp_dir) / f"{path.stem}{suffix}"
                if part.exists():
                    os.replace(part, path.with_suffix(suffix))
    else:
        # the layer is named explicitly: FlatGeobuf and GeoJSON would otherwise take the temporary file's name
        options: dict = {}
        if driver == "GeoJSON":  # RFC 7946: WGS84 longitude/latitude, right-hand rings
            parcels = parcels.to_crs(4326)
            options["layer_options"] = {"RFC7946": "YES"}
        elif driver == "GPKG":
            options["dataset_options"] = {"VERSION": GPKG_VERSION}
        with atomic_path(path) as tmp:
            parcels.to_file(tmp, driver=driver, engine="pyogrio", layer=layer, **options)
    LOGGER.info("wrote %d parcels to %s (%s)", len(parcels), path, driver)

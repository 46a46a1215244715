"""``s2agri export``: predicted parcels and rasters of EOPatches to GIS files.

The vector format follows the file extension: ``.gpkg`` (GeoPackage 1.2), ``.geojson``/``.json``
(RFC 7946: reprojected to WGS84), ``.fgb`` (FlatGeobuf), ``.parquet`` (GeoParquet 1.1 with a ``bbox``
covering column, so readers can skip row groups by extent) and ``.shp``
(ESRI Shapefile; ``perimeter_m`` is ``perim_m`` there, dBASE names have 10 characters). Every file is
written under a temporary name and renamed into place (for a Shapefile, each of its side files).
Rasters are the submission GeoTIFFs and probability COGs of the prediction tasks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from eolearn.core import EOPatch, FeatureType

from s2agri.tasks.export import GPKG_VERSION, ProbabilityCogTask, SubmissionTiffTask, atomic_path
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_PROBA
from s2agri.tasks.vectorise import PARCELS_PRED
from s2agri.workflows.errors import S2AgriInputError
from s2agri.workflows.runs import find_boxes, preflight

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


def _type_names(geometry: object) -> list[str]:
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


def merged_parcels(boxes: Sequence[Path]) -> gpd.GeoDataFrame:
    """PARCELS_PRED of ``boxes`` in one GeoDataFrame, in the CRS of the first box."""
    frames = [EOPatch.load(str(box), features=[PARCELS_PRED])[PARCELS_PRED] for box in boxes]
    crs = frames[0].crs
    frames = [frame if frame.crs.equals(crs) else frame.to_crs(crs) for frame in frames]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)


def export_rasters(boxes: Sequence[Path], submission: Path | None, proba: Path | None) -> None:
    """Submission GeoTIFFs and/or probability COGs of ``boxes`` (named after the box folders)."""
    tasks = []
    if submission is not None:
        submission.mkdir(parents=True, exist_ok=True)
        tasks.append(SubmissionTiffTask(submission))
    if proba is not None:
        proba.mkdir(parents=True, exist_ok=True)
        tasks.append(ProbabilityCogTask(proba))
    for box in boxes:
        features = [PRED_CULTIVATED] + ([PRED_PROBA] if proba is not None else [])
        patch = EOPatch.load(str(box), features=[*features, FeatureType.META_INFO])
        for task in tasks:
            task.execute(patch, box=box.name)


def export_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri export``."""
    if args.parcels is None and args.submission is None and args.proba is None:
        raise S2AgriInputError("nothing to export: give --parcels FILE, --submission DIR and/or --proba DIR")
    if args.parcels is not None:
        vector_format(Path(args.parcels))
        if Path(args.parcels).exists() and not args.overwrite:
            raise S2AgriInputError(f"{args.parcels} exists: choose another path or add --overwrite")
    boxes = find_boxes(args.boxes)
    needed = [PARCELS_PRED] if args.parcels is not None else []
    needed += [PRED_CULTIVATED] if args.submission is not None else []
    needed += [PRED_PROBA] if args.proba is not None else []
    preflight(boxes, needed)
    if args.parcels is not None:
        parcels = merged_parcels(boxes)
        write_vector(parcels, Path(args.parcels), args.layer)
        print(
            f"wrote {len(parcels)} parcels of {len(boxes)} boxes to {args.parcels} (EPSG:{parcels.crs.to_epsg()})"
        )
    if args.submission is not None or args.proba is not None:
        export_rasters(
            boxes,
            None if args.submission is None else Path(args.submission),
            None if args.proba is None else Path(args.proba),
        )
        for name, folder in (("submission GeoTIFFs", args.submission), ("probability COGs", args.proba)):
            if folder is not None:
                print(f"wrote {len(boxes)} {name} to {folder}")
    return 0

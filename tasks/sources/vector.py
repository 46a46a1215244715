"""Parcel polygons from vector files: GeoPackage, GeoParquet, FlatGeobuf, Shapefile, GeoJSON.

:func:`read_parcels_file` and :class:`VectorParcelsTask` give the parcels of one box as the
:data:`~s2agri.tasks.contract.REFERENCE` GeoDataFrame (``id``, ``label``, ``geometry``) in the box
CRS. The box, transformed to the file's CRS, is pushed down to the reader as a bounding-box filter
(pyogrio/GDAL; GeoParquet is read whole by geopandas, then filtered); the exact test is
``intersects`` in the box CRS. Invalid geometries are repaired with ``shapely.make_valid`` (warning
with the count), or reported with their ids when ``on_invalid="error"``.

The last part (columns, codes, reprojection, repair, exact intersects, clipping) is
:func:`~s2agri.tasks.sources.parcels.to_reference`, shared with the other parcel sources.
Bad files and parcels raise :class:`~s2agri.tasks.errors.S2AgriInputError`, in one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import pyogrio
import pyogrio.errors
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from sentinelhub import BBox

from s2agri.tasks.errors import S2AgriInputError

from .. import contract
from .parcels import OnInvalid, bounds_in_crs, require_columns, resolve_bbox, to_reference

__all__ = ["SUPPORTED_SUFFIXES", "VectorParcelsTask", "read_parcels_file"]

LOGGER = logging.getLogger(__name__)

#: File name endings read here, and the reader of each.
_READERS: dict[str, str] = {
    ".fgb": "pyogrio",
    ".geojson": "pyogrio",
    ".geoparquet": "parquet",
    ".gpkg": "pyogrio",
    ".json": "pyogrio",
    ".parquet": "parquet",
    ".shp": "pyogrio",
    ".shp.zip": "pyogrio",
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_READERS))


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".shp.zip" if name.endswith(".shp.zip") else path.suffix.lower()


def _layer(path: Path, layer: str | None) -> str | None:
    """The layer to read: ``layer`` when the file has it, the only one when it has one, else an error."""
    try:
        names = [str(name) for name in pyogrio.list_layers(str(path))[:, 0]]
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise S2AgriInputError(f"cannot read parcel file {path}: {_first_line(exc)}") from None
    if layer is not None:
        if layer not in names:
            raise S2AgriInputError(
                f"parcel file {path} has no layer '{layer}': its layers are {', '.join(names)}"
            )
        return layer
    if len(names) > 1:
        raise S2AgriInputError(
            f"parcel file {path} has {len(names)} layers ({', '.join(names)}): pass layer= naming one"
        )
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def _no_crs(path: Path) -> S2AgriInputError:
    suffix = _suffix(path)
    return S2AgriInputError(
        f"parcel file {path} has no CRS: set it, e.g. ogr2ogr -a_srs EPSG:<code> with_crs{suffix} {path.name}"
    )


def _read_ogr(
    path: Path, bbox: BBox | None, layer: str | None, id_column: str, label_column: str
) -> gpd.GeoDataFrame:
    layer = _layer(path, layer)
    source = f"parcel file {path}"
    try:
        info = pyogrio.read_info(str(path), layer=layer)
        if info["crs"] is None:
            raise _no_crs(path)
        require_columns([str(name) for name in info["fields"]], id_column, label_column, source)
        bounds = None if bbox is None else bounds_in_crs(bbox, info["crs"])
        return pyogrio.read_dataframe(
            str(path), layer=layer, bbox=bounds, columns=list(dict.fromkeys([id_column, label_column]))
        )
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError) as exc:
        raise S2AgriInputError(f"cannot read parcel file {path}: {_first_line(exc)}") from None


def _read_parquet(
    path: Path, bbox: BBox | None, layer: str | None, id_column: str, label_column: str
) -> gpd.GeoDataFrame:
    if layer is not None:
        raise S2AgriInputError(f"parcel file {path} is GeoParquet, which has no layers: leave layer= unset")
    try:
        frame = gpd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors are OSError or ValueError subclasses
        raise S2AgriInputError(f"cannot read parcel file {path}: {_first_line(exc)}") from None
    if frame.crs is None:
        raise _no_crs(path)
    columns = [name for name in frame.columns if name != frame.geometry.name]
    require_columns(columns, id_column, label_column, f"parcel file {path}")
    if bbox is not None:
        minx, miny, maxx, maxy = bounds_in_crs(bbox, frame.crs)
        frame = frame.cx[minx:maxx, miny:maxy]
    return frame


def read_parcels_file(
    path: str | Path,
    bbox: BBox | None = None,
    *,
    layer: str | None = None,
    id_column: str = "id",
    label_column: str = "label",
    clip: bool = False,
    on_invalid: OnInvalid = "repair",
) -> gpd.GeoDataFrame:
    """The parcels of a vector file that intersect ``bbox``, as ``id, label, geometry`` in the box CRS.

    Formats by name: ``.gpkg``, ``.parquet``/``.geoparquet``, ``.fgb``, ``.shp`` (or a zipped
    ``.shp.zip``), ``.geojson``/``.json``. ``layer``: needed when a file has several.
    ``id_column``/``label_column`` are renamed to ``id``/``label``; integral float or string codes
    become int64. Without ``bbox``: every parcel, in the file's CRS. ``clip``: cut parcels to the box.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in _READERS:
        raise S2AgriInputError(
            f"parcel file {path} has an unsupported format '{suffix or path.name}': "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise S2AgriInputError(f"parcel file {path} not found: check the path")
    reader = _read_parquet if _READERS[suffix] == "parquet" else _read_ogr
    parcels = reader(path, bbox, layer, id_column, label_column)
    result = to_reference(
        parcels,
        bbox,
        source=f"parcel file {path}",
        id_column=id_column,
        label_column=label_column,
        clip=clip,
        on_invalid=on_invalid,
    )
    LOGGER.info("parcel file %s: %d parcels for the box", path, len(result))
    return result


class VectorParcelsTask(EOTask):
    """Reads the parcels of the box from a vector file into ``vector_timeless/REFERENCE``.

    ``execute(eopatch=None, *, bbox=...)`` returns the EOPatch (a new one holding only ``bbox`` when
    none is given) with the parcels of :func:`read_parcels_file` in the box CRS.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        layer: str | None = None,
        id_column: str = "id",
        label_column: str = "label",
        clip: bool = False,
        on_invalid: OnInvalid = "repair",
        output_feature: Feature = contract.REFERENCE,
    ):
        if on_invalid not in ("repair", "error"):
            raise S2AgriInputError(f"on_invalid={on_invalid!r}: give 'repair' or 'error'")
        self.path = Path(path)
        self.layer = layer
        self.id_column = id_column
        self.label_column = label_column
        self.clip = clip
        self.on_invalid = on_invalid
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.VECTOR_TIMELESS]
        )

    def execute(self, eopatch: EOPatch | None = None, *, bbox: BBox | None = None) -> EOPatch:
        eopatch, bbox = resolve_bbox(eopatch, bbox)
        eopatch[self.output_feature] = read_parcels_file(
            self.path,
            bbox,
            layer=self.layer,
            id_column=self.id_column,
            label_column=self.label_column,
            clip=self.clip,
            on_invalid=self.on_invalid,
        )
        return eopatch

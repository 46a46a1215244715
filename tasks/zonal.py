"""Parcel-level (object-aggregated) time series: zonal statistics per parcel and date.

Seed 004's object aggregated dataset (OAD): per parcel and acquisition, the mean and the standard
deviation of each band over the parcel's pixels, as the input of parcel classifiers
(:mod:`s2agri.models.parcel`: TempCNN, Transformer encoder, LSTM).

* :func:`parcel_index_map`: the parcels rasterised at 10 m as row positions (``-1`` outside).
* :func:`zonal_statistics`: per-parcel, per-date mean / std / count over valid pixels (np.bincount).
* :class:`ZonalStatisticsTask`: the series of a box as ``vector_timeless/PARCEL_STATS``.
* :func:`read_parcel_series`: the table back as (N, T, C) arrays; the parcel models' inputs and
  targets are built from them in :mod:`s2agri.tasks.parcel_series`.
* :func:`zonal_attributes`: a compact per-month attribute table for GIS export (Shapefile names).
* :func:`box_geometries`, :func:`rasterise_values`: the helpers with which
  :class:`s2agri.tasks.predict_parcel.PaintParcelPredictionsTask` paints per-parcel probabilities on
  the 2.5 m grid, so the usual 2.5 m scoring applies.

**Pixels of a parcel, and the challenge's -2.5 m buffer.** The challenge rasterised its reference
at 2.5 m after shrinking every parcel by 2.5 m (``contract.REFERENCE_BUFFER_M``, ``all_touched=False``):
the outermost 2.5 m pixel ring of each parcel is background. At 10 m a pixel belongs to a parcel when
its centre lies inside the polygon (``all_touched=False``), after an optional ``buffer`` (m).
The default ``buffer=0.0`` keeps small and thin parcels, which a 10 m grid already samples sparsely;
``buffer=-2.5`` applies the challenge's rule (a 10 m pixel then needs its centre at least 2.5 m
inside, i.e. the 2.5 m sub-pixel around its centre labelled in the reference); ``buffer=-5`` keeps
only 10 m pixels whose centre is half a pixel inside (fewer mixed pixels, more parcels lost). Parcels
whose 10 m footprint is empty have no statistics and are absent from ``PARCEL_STATS``. Painting
back at 2.5 m uses the challenge's -2.5 m by default, so a predicted parcel has exactly the footprint
of the reference masks. Where parcels overlap, the later row wins (rasterio's painter's order), both
at 10 m and at 2.5 m.

**PARCEL_STATS layout** (a GeoDataFrame, saved by ``EOPatch.save`` as GeoPackage): one row per
parcel with a non-empty 10 m footprint, in the order of the input layer, in the box CRS, with the
parcel geometry and the columns ``id``, ``label``, ``cultivated`` (1 cultivated, 0 not cultivated,
-1 not declared or no label), ``n_pixels`` (10 m pixels in the footprint), then per frame ``t``
(0-based, zero-padded to 2 digits) ``count_<t>`` (valid pixels), ``mean_<band>_<t>`` and
``std_<band>_<t>`` (population std, ``ddof=0``; NaN where the parcel has no valid pixel at ``t``).
That is ``4 + T (2C + 1)`` attributes: 1204 for the contract's maximum T = 48 and C = 12, below
GeoPackage's 2000-column limit (larger tables raise). The acquisition dates of the frames are in
``meta_info["PARCEL_STATS_DATES"]`` (ISO strings): a temporal filter applied later does not touch a
timeless vector feature, so always pair the table with those dates (:func:`parcel_dates`).
:func:`read_parcel_series` turns the table back into (N, T, C) arrays.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import rasterio.transform
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature
from sentinelhub import BBox

from . import contract
from .masks import REFLECTANCE, VALID
from .outputs import feature_array

LOGGER = logging.getLogger(__name__)

PARCEL_STATS = (FeatureType.VECTOR_TIMELESS, "PARCEL_STATS")
#: ``meta_info`` key of the ISO dates of the frames of ``PARCEL_STATS``.
DATES_KEY = "PARCEL_STATS_DATES"
#: Months of the challenge season (2019-03-01 .. 2019-09-01): March to August.
DEFAULT_MONTHS: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
#: ``cultivated`` column codes.
CULTIVATED_VALUES: dict[str, int] = {"cultivated": 1, "not_cultivated": 0, "not_declared": -1}
#: GeoPackage (SQLite) tables hold at most 2000 columns; keep room for fid and geometry.
MAX_GPKG_ATTRIBUTES = 1990
#: Observations (pixels x frames x channels) processed at once by :func:`zonal_statistics`.
CHUNK_ELEMENTS = 1 << 24
#: Leading attribute columns of PARCEL_STATS.
ID_COLUMNS: tuple[str, ...] = ("id", "label", "cultivated", "n_pixels")

_COUNT_RE = re.compile(r"^count_(\d+)$")
_MEAN_RE = re.compile(r"^mean_(.+)_(\d+)$")


def feature_label(feature: Feature) -> str:
    return f"{feature[0].value}/{feature[1]}"


def count_column(t: int) -> str:
    """Name of the valid-pixel count column of frame ``t``."""
    return f"count_{t:02d}"


def stat_column(stat: str, band: str, t: int) -> str:
    """Name of the ``stat`` (``mean`` / ``std``) column of ``band`` at frame ``t``."""
    return f"{stat}_{band}_{t:02d}"


def box_geometries(parcels: gpd.GeoDataFrame, bbox: BBox, buffer: float) -> gpd.GeoSeries:
    """The parcels' geometries in the box CRS, buffered by ``buffer`` m (index kept)."""
    if parcels.crs is None:
        raise ValueError("parcels have no CRS: set one (e.g. EPSG:32633) before rasterising")
    geometries = parcels.geometry
    box_crs = bbox.crs.pyproj_crs()
    if geometries.crs != box_crs:
        LOGGER.info("parcels are in %s, the box in %s: reprojecting the parcels", geometries.crs, box_crs)
        geometries = geometries.to_crs(box_crs)
    if buffer:
        geometries = geometries.buffer(buffer)
    return geometries


def rasterise_values(
    geometries: gpd.GeoSeries,
    values: np.ndarray,
    bbox: BBox,
    shape: tuple[int, int],
    fill: float,
    dtype: type,
) -> np.ndarray:
    """``values[i]`` burnt where geometry ``i`` covers a pixel centre (all_touched=False), ``fill`` elsewhere."""
    height, width = int(shape[0]), int(shape[1])
    out: np.ndarray = np.full((height, width), fill, dtype=dtype)
    usable = ~(geometries.isna().to_numpy() | geometries.is_empty.to_numpy())
    if not usable.any() or height == 0 or width == 0:
        return out
    transform = rasterio.transform.from_bounds(*bbox, width=width, height=height)
    shapes = zip(geometries.to_numpy()[usable], values[usable].tolist(), strict=True)
    rasterio.features.rasterize(
        shapes, out=out, transform=transform, all_touched=contract.REFERENCE_ALL_TOUCHED
    )
    return out


def parcel_index_map(
    parcels: gpd.GeoDataFrame, bbox: BBox, shape_10m: tuple[int, int], *, buffer: float = 0.0
) -> np.ndarray:
    """(H, W) int32 map of parcel row positions (0 .. N-1 in ``parcels``' order), -1 outside any parcel.

    Positions, not ``id`` values: the id of pixel value ``i`` is ``parcels["id"].iloc[i]``. A pixel
    is a parcel's when its centre is inside the polygon buffered by ``buffer`` m (``all_touched=False``,
    rasterio); overlapping parcels: the later row wins. Parcels are reprojected to the box CRS; missing
    and empty geometries cover nothing. See the module docstring for the challenge's -2.5 m buffer.
    """
    if len(shape_10m) != 2 or min(shape_10m) < 0:
        raise ValueError(f"shape_10m={shape_10m}: give the (H, W) of the 10 m grid")
    if len(parcels) >= np.iinfo(np.int32).max:
        raise ValueError(f"{len(parcels)} parcels do not fit an int32 index map: split the layer")
    if parcels.empty:
        return np.full(tuple(int(s) for s in shape_10m), -1, dtype=np.int32)
    geometries = box_geometries(parcels, bbox, buffer)
    return rasterise_values(geometries, np.arange(len(parcels)), bbox, shape_10m, -1, np.int32)


def zonal_statistics(
    bands: np.ndarray, valid: np.ndarray, index_map: np.ndarray, n_parcels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-parcel, per-frame ``mean``, ``std`` (N, T, C) float32 and ``counts`` (N, T) int32 of valid pixels.

    ``bands`` (T, H, W, C) float, ``valid`` (T, H, W) or (T, H, W, 1) bool, ``index_map`` (H, W) int
    with values in -1 .. ``n_parcels`` - 1 (-1: no parcel). Only valid pixels with finite values in
    every channel count. ``std`` is the population standard deviation (``ddof=0``, as ``np.std``);
    mean and std are NaN where a parcel has no valid pixel at a frame. Sums are accumulated in
    float64 with np.bincount on flattened (parcel, frame) keys, two passes (mean, then squared
    deviations), over chunks of frames so that memory stays bounded.
    """
    bands = np.asarray(bands)
    valid = np.asarray(valid)
    index_map = np.asarray(index_map)
    if bands.ndim != 4:
        raise ValueError(f"bands have shape {bands.shape}: expected (T, H, W, C)")
    n_frames, height, width, n_channels = bands.shape
    if valid.ndim == 4 and valid.shape[-1] == 1:
        valid = valid[..., 0]
    if valid.shape != (n_frames, height, width):
        raise ValueError(f"valid has shape {valid.shape}: expected {(n_frames, height, width)} (+1 channel)")
    if index_map.shape != (height, width):
        raise ValueError(f"index_map has shape {index_map.shape}: expected {(height, width)}")
    if not np.issubdtype(index_map.dtype, np.integer):
        raise ValueError(f"index_map has dtype {index_map.dtype}: give integer parcel positions")
    n_parcels = int(n_parcels)
    if n_parcels < 0 or (index_map.size and (index_map.min() < -1 or index_map.max() >= n_parcels)):
        raise ValueError(f"index_map values must lie in -1 .. {n_parcels - 1} (n_parcels={n_parcels})")

    flat_index = index_map.reshape(-1)
    inside = np.flatnonzero(flat_index >= 0)  # pixels of some parcel
    parcel_of = flat_index[inside].astype(np.int64)
    sums = np.zeros((n_parcels * n_frames, n_channels), dtype=np.float64)
    squares = np.zeros_like(sums)
    counts = np.zeros(n_parcels * n_frames, dtype=np.int64)
    channel = np.arange(n_channels)
    size = n_parcels * n_frames * n_channels
    step = max(1, CHUNK_ELEMENTS // max(1, inside.size * n_channels))
    for start in range(0, n_frames, step):
        frames = np.arange(start, min(n_frames, start + step))
        values = bands[frames].reshape(len(frames), -1, n_channels)[:, inside].astype(np.float64)
        ok = valid[frames].reshape(len(frames), -1)[:, inside] & np.isfinite(values).all(axis=-1)
        keys = (parcel_of[None, :] * n_frames + frames[:, None])[ok]  # flattened (parcel, frame) keys
        values = values[ok]  # (K, C)
        channel_keys = (keys[:, None] * n_channels + channel).reshape(-1)
        chunk_counts = np.bincount(keys, minlength=n_parcels * n_frames)
        chunk_sums = np.bincount(channel_keys, weights=values.reshape(-1), minlength=size)
        counts += chunk_counts
        sums += chunk_sums.reshape(-1, n_channels)
        with np.errstate(invalid="ignore", divide="ignore"):
            chunk_mean = chunk_sums.reshape(-1, n_channels) / chunk_counts[:, None]
        deviations = values - chunk_mean[keys]  # frames of a chunk are complete: its means are final
        squares += np.bincount(channel_keys, weights=(deviations**2).reshape(-1), minlength=size).reshape(
            -1, n_channels
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[:, None]
        std = np.sqrt(squares / counts[:, None])
    shape = (n_parcels, n_frames, n_channels)
    return (
        mean.reshape(shape).astype(np.float32),
        std.reshape(shape).astype(np.float32),
        counts.reshape(n_parcels, n_frames).astype(np.int32),
    )


def cultivated_classes(labels: pd.Series | np.ndarray) -> np.ndarray:
    """int8 per label code: 1 cultivated, 0 not cultivated, -1 not declared; unknown codes raise."""
    codes = pd.Series(np.asarray(labels))
    if codes.isna().any():
        raise ValueError(
            f"{int(codes.isna().sum())} parcel(s) have no label code: fill them or drop the parcels"
        )
    numeric = pd.to_numeric(codes, errors="coerce")
    if numeric.isna().any() or (numeric % 1 != 0).any():
        raise ValueError(
            "parcels have non-integer label codes: use the challenge codes of s2agri.tasks.contract"
        )
    numeric = numeric.astype(np.int64)
    unknown = sorted(set(numeric.unique()) - set(contract.LABEL_NAMES))
    if unknown:
        raise ValueError(
            f"unknown label codes {unknown[:10]}: use the challenge codes of s2agri.tasks.contract"
        )
    return np.select(
        [numeric.isin(contract.CULTIVATED_CODES), numeric.isin(contract.NOT_DECLARED_CODES)],
        [CULTIVATED_VALUES["cultivated"], CULTIVATED_VALUES["not_declared"]],
        default=CULTIVATED_VALUES["not_cultivated"],
    ).astype(np.int8)


def parcel_stats_table(
    parcels: gpd.GeoDataFrame,
    mean: np.ndarray,
    std: np.ndarray,
    counts: np.ndarray,
    n_pixels: np.ndarray,
    *,
    bands: Sequence[str] = contract.BAND_NAMES,
    id_column: str = "id",
    label_column: str = "label",
) -> gpd.GeoDataFrame:
    """The PARCEL_STATS table (module docstring) of the parcels with ``n_pixels > 0``.

    ``mean``, ``std`` (N, T, C), ``counts`` (N, T) and ``n_pixels`` (N,) follow ``parcels``' rows. A
    layer without ``id_column`` gets the row positions as ids; without ``label_column``, labels -1
    and ``cultivated`` -1 (parcels of a box to predict).
    """
    n_parcels, n_frames, n_channels = mean.shape
    if n_parcels != len(parcels) or len(n_pixels) != n_parcels:
        raise ValueError(f"{n_parcels} series and {len(n_pixels)} pixel counts for {len(parcels)} parcels")
    if len(bands) != n_channels:
        raise ValueError(f"{len(bands)} band names for {n_channels} channels")
    width = len(ID_COLUMNS) + n_frames * (2 * n_channels + 1)
    if width > MAX_GPKG_ATTRIBUTES:
        raise ValueError(
            f"{n_frames} frames x {n_channels} bands make {width} attributes, over GeoPackage's limit: "
            "select fewer frames (FrameSelectionTask) or bands"
        )
    keep = np.flatnonzero(np.asarray(n_pixels) > 0)
    rows = parcels.iloc[keep]
    ids = rows[id_column].to_numpy() if id_column in rows.columns else keep
    if label_column in rows.columns:
        classes = cultivated_classes(rows[label_column]) if len(rows) else np.zeros(0, np.int8)
        labels = pd.to_numeric(rows[label_column]).to_numpy().astype(np.int64)
    else:
        labels = np.full(len(keep), -1, dtype=np.int64)
        classes = np.full(len(keep), CULTIVATED_VALUES["not_declared"], dtype=np.int8)
    head = pd.DataFrame(
        {
            "id": ids,
            "label": labels,
            "cultivated": classes.astype(np.int64),
            "n_pixels": np.asarray(n_pixels)[keep].astype(np.int64),
        }
    )
    t = np.arange(n_frames)
    count_names = [count_column(int(i)) for i in t]
    mean_names = [stat_column("mean", band, int(i)) for i in t for band in bands]
    std_names = [stat_column("std", band, int(i)) for i in t for band in bands]
    block = np.concatenate(
        [
            counts[keep].astype(np.float64),
            mean[keep].reshape(len(keep), n_frames * n_channels).astype(np.float64),
            std[keep].reshape(len(keep), n_frames * n_channels).astype(np.float64),
        ],
        axis=1,
    )
    body = pd.DataFrame(block, columns=count_names + mean_names + std_names)
    body[count_names] = body[count_names].astype(np.int64)
    table = pd.concat([head, body], axis=1)
    geometry = rows.geometry.to_numpy() if len(rows) else gpd.GeoSeries([]).to_numpy()
    return gpd.GeoDataFrame(table, geometry=geometry, crs=getattr(parcels, "crs", None))


def read_parcel_series(table: gpd.GeoDataFrame | pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mean``, ``std`` (N, T, C) float32 and ``counts`` (N, T) int32 of a PARCEL_STATS table.

    Frames and bands are parsed from the column names (``count_<t>``, ``mean_<band>_<t>``), so a
    table read back from a GeoPackage works too.
    """
    frames = sorted(int(m.group(1)) for c in table.columns if (m := _COUNT_RE.match(str(c))))
    if frames != list(range(len(frames))):
        raise ValueError("the table has no complete count_<t> columns: is it a PARCEL_STATS table?")
    bands: list[str] = []
    for column in table.columns:
        match = _MEAN_RE.match(str(column))
        if match and match.group(1) not in bands:
            bands.append(match.group(1))
    n_frames, n_channels = len(frames), len(bands)
    try:
        counts = table[[count_column(t) for t in frames]].to_numpy(dtype=np.float64)
        mean, std = (
            table[[stat_column(stat, band, t) for t in frames for band in bands]].to_numpy(dtype=np.float64)
            for stat in ("mean", "std")
        )
    except KeyError as error:
        raise ValueError(f"incomplete PARCEL_STATS table: {error}") from None
    shape = (len(table), n_frames, n_channels)
    return (
        mean.reshape(shape).astype(np.float32),
        std.reshape(shape).astype(np.float32),
        np.nan_to_num(counts).astype(np.int32),
    )


def parcel_dates(eopatch: EOPatch) -> list[dt.datetime]:
    """Dates of the frames of ``PARCEL_STATS``: ``meta_info["PARCEL_STATS_DATES"]``, else the timestamps."""
    stored = eopatch.meta_info.get(DATES_KEY)
    if stored is None:
        return list(eopatch.get_timestamps())
    return [dt.datetime.fromisoformat(str(value)) for value in stored]


class ZonalStatisticsTask(EOTask):
    """Per-parcel series of mean / std of every band over valid pixels into ``vector_timeless/PARCEL_STATS``.

    Reads the reflectance (``data/REFLECTANCE``, :class:`s2agri.tasks.masks.ReflectanceTask`), the
    validity (``mask/VALID``, :class:`s2agri.tasks.masks.ValidMaskTask`) and the parcels (a vector
    feature, default ``vector_timeless/REFERENCE``, or a GeoDataFrame); rasterises the parcels at
    10 m (:func:`parcel_index_map` with ``buffer``), computes :func:`zonal_statistics` and writes the
    table described in the module docstring, plus the frame dates in ``meta_info["PARCEL_STATS_DATES"]``.
    """

    def __init__(
        self,
        parcels: gpd.GeoDataFrame | Feature = contract.REFERENCE,
        output_feature: Feature = PARCEL_STATS,
        *,
        reflectance_feature: Feature = REFLECTANCE,
        valid_feature: Feature = VALID,
        buffer: float = 0.0,
        bands: Sequence[str] = contract.BAND_NAMES,
        id_column: str = "id",
        label_column: str = "label",
    ):
        self.parcels = parcels
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.VECTOR_TIMELESS]
        )
        self.reflectance_feature = self.parse_feature(
            reflectance_feature, allowed_feature_types=[FeatureType.DATA]
        )
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])
        self.buffer = float(buffer)
        self.bands = tuple(bands)
        self.id_column = id_column
        self.label_column = label_column

    def _input_parcels(self, eopatch: EOPatch) -> gpd.GeoDataFrame:
        if isinstance(self.parcels, gpd.GeoDataFrame):
            return self.parcels
        if self.parcels not in eopatch:
            raise ValueError(
                f"the EOPatch has no {feature_label(self.parcels)}: add the parcel polygons or pass a GeoDataFrame"
            )
        parcels = eopatch[self.parcels]
        if not isinstance(parcels, gpd.GeoDataFrame):
            raise ValueError(f"{feature_label(self.parcels)} is not a GeoDataFrame")
        return parcels

    def execute(self, eopatch: EOPatch) -> EOPatch:
        if eopatch.bbox is None:
            raise ValueError("the EOPatch has no bbox: zonal statistics need its extent and CRS")
        reflectance = feature_array(eopatch, self.reflectance_feature)
        valid = feature_array(eopatch, self.valid_feature)
        if reflectance.ndim != 4 or reflectance.shape[-1] != len(self.bands):
            raise ValueError(
                f"{feature_label(self.reflectance_feature)} has shape {reflectance.shape}: expected (T, H, W, {len(self.bands)})"
            )
        parcels = self._input_parcels(eopatch)
        index_map = parcel_index_map(parcels, eopatch.bbox, reflectance.shape[1:3], buffer=self.buffer)
        n_parcels = len(parcels)
        mean, std, counts = zonal_statistics(reflectance, valid, index_map, n_parcels)
        n_pixels = np.bincount(index_map[index_map >= 0], minlength=n_parcels)
        table = parcel_stats_table(
            parcels,
            mean,
            std,
            counts,
            n_pixels,
            bands=self.bands,
            id_column=self.id_column,
            label_column=self.label_column,
        )
        if table.crs is not None and table.crs != eopatch.bbox.crs.pyproj_crs():
            table = table.to_crs(eopatch.bbox.crs.pyproj_crs())
        LOGGER.debug(
            "zonal statistics of %d of %d parcels over %d frames", len(table), n_parcels, reflectance.shape[0]
        )
        eopatch[self.output_feature] = table
        timestamps = eopatch.timestamps or []
        if len(timestamps) == reflectance.shape[0]:
            eopatch.meta_info[DATES_KEY] = [stamp.isoformat() for stamp in timestamps]
        return eopatch


def attribute_name(stat: str, band: str, month: int) -> str:
    """Shapefile-safe (<= 10 chars) attribute of a monthly band statistic, e.g. ``B8Am04`` / ``B02s07``."""
    return f"{band}{stat[0]}{int(month):02d}"


def zonal_attributes(
    table: gpd.GeoDataFrame,
    dates: Sequence[dt.date],
    months: Sequence[int] = DEFAULT_MONTHS,
) -> gpd.GeoDataFrame:
    """One row per parcel for GIS export: geometry, ``id``, ``label``, ``cultivated``, ``n_pixels``,
    and per month ``<band>m<MM>`` / ``<band>s<MM>`` (e.g. ``B04m05``) and ``ndates<MM>``.

    The monthly mean and std are pooled over every valid pixel observation of the month (a parcel's
    frames weighted by their valid pixel counts: exactly the mean / population std of those
    observations); NaN where the month has none. ``ndates<MM>`` is the number of frames of the
    month with at least one valid pixel. Every name has <= 10 characters (Shapefile's limit); columns
    are float64 / int64, so the table saves to GeoPackage and Shapefile alike.
    """
    mean, std, counts = read_parcel_series(table)
    if mean.shape[1] != len(dates):
        raise ValueError(
            f"the table has {mean.shape[1]} frames, {len(dates)} dates given: use parcel_dates()"
        )
    bands = [m.group(1) for c in table.columns if (m := _MEAN_RE.match(str(c))) and m.group(2) == "00"]
    frame_months = np.array([date.month for date in dates], dtype=np.int64)
    weights = counts.astype(np.float64)[..., None]  # (N, T, 1)
    mean64 = np.nan_to_num(mean.astype(np.float64))
    second = np.nan_to_num(std.astype(np.float64) ** 2) + mean64**2  # E[x^2] per frame
    columns: dict[str, np.ndarray] = {}
    for month in months:
        in_month = (frame_months == int(month)).astype(np.float64)[None, :, None]
        n = (weights * in_month).sum(axis=1)  # (N, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled_mean = (weights * in_month * mean64).sum(axis=1) / n
            pooled_var = (weights * in_month * second).sum(axis=1) / n - pooled_mean**2
        pooled_std = np.sqrt(np.maximum(pooled_var, 0.0))
        for c, band in enumerate(bands):
            columns[attribute_name("mean", band, month)] = pooled_mean[:, c]
            columns[attribute_name("std", band, month)] = pooled_std[:, c]
        columns[f"ndates{int(month):02d}"] = (
            ((counts > 0) & (in_month[..., 0] > 0)).sum(axis=1).astype(np.int64)
        )
    head = {name: table[name].to_numpy().astype(np.int64) for name in ID_COLUMNS}
    data = pd.DataFrame({**head, **columns}, index=range(len(table)))
    too_long = [name for name in data.columns if len(name) > 10]
    if too_long:
        raise ValueError(f"attribute names over 10 characters: {too_long[:5]} (band names too long?)")
    return gpd.GeoDataFrame(data, geometry=table.geometry.to_numpy(), crs=table.crs)

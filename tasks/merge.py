"""Seamless parcels of a region: per-box parcel polygons merged across the edges of the boxes.

A field cut by the edge between two boxes is traced as one polygon in each box;
:func:`merge_parcels` unions such parts into one parcel and recomputes its attributes.

Design: union the *unsimplified* pixel polygons, simplify once afterwards
--------------------------------------------------------------------------------
:class:`~s2agri.tasks.vectorise.VectoriseTask` simplifies each box on its own
(``shapely.coverage_simplify``), which keeps shared vertices shared *within* a box but knows
nothing of the neighbouring box: a vertex where a field boundary meets the box edge may be
removed on one side and kept on the other, so the two halves no longer meet along the same
segment and their union has notches, slivers and gaps. Snapping simplified vertices to the box
edge cannot repair that in general (the removed vertices are gone, and which one to move where
is a guess). Pixel polygons, on the other hand, have every vertex on a pixel corner and every
edge along a pixel side; adjacent boxes are aligned to one 2.5 m grid, so the two halves of a
field share the box edge *exactly* and ``shapely.union_all`` of them is exact (no new vertices,
no slivers, area = sum of the pixel areas). Hence:

1. trace every box **without simplification and without the minimum-area filter**
   (:func:`trace_boxes` for arrays, :func:`trace_eopatch` for prediction EOPatches; both run
   :class:`VectoriseTask` with ``simplify_tolerance_m=None, min_area_m2=0``: a field of 300 m²
   on each side of an edge is a 600 m² parcel and must not be dropped per box);
2. :func:`merge_parcels` snaps the parts touching a shared box edge to the common pixel grid
   (guarding against last-bit differences of the box origins), refuses parts there that are not
   pixel polygons (a simplified input would give a wrong union), unions the parts that share a
   boundary of positive length across boxes, applies ``min_area_m2`` to the pixel area, and only
   then runs ``shapely.coverage_simplify`` once over the whole region, so vertices shared by
   neighbouring parcels stay shared (no gaps or overlaps after simplification either).

Only parts touching a shared box edge can need a union. Along each shared edge, every pixel
side is labelled with the part of either box that has it on its boundary; parts facing each
other on at least one pixel side are in contact (a shared boundary of positive length). Parts
meeting at a single point (a pixel corner, also the corner of four boxes) stay apart, as
4-connectivity does inside a box. Contacts form a graph whose connected components are the
merged parcels (``scipy.sparse.csgraph.connected_components``): a field crossing the corner of
four boxes is one parcel. All other parts are passed through unchanged (then simplified with
the rest).

The simplification is deterministic: rings are normalised and the parcels simplified in a fixed
spatial order, so merging the boxes of a region gives the same polygons as tracing the region as
one box, whatever the order of the frames. GEOS's coverage simplification takes time quadratic
in the number of polygons of one call; :func:`_simplify` computes the same result in batches
of :data:`_SIMPLIFY_BATCH` parcels, so the merge time grows linearly with the region.

Memory: the unsimplified polygons of the whole region are held at once (about twice the
vertices of the simplified ones), plus the output.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from eolearn.core import EOPatch
from rasterio.transform import Affine
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sentinelhub import CRS, BBox

from . import contract
from .instances import PRED_INSTANCES
from .outputs import PRED_CULTIVATED, PRED_PROBA
from .vectorise import PARCELS_PRED, VectoriseTask, _polygonal, parcel_ids

LOGGER = logging.getLogger(__name__)

#: Attribute columns of a merged parcel layer, in order (then ``geometry``).
MERGED_COLUMNS: tuple[str, ...] = ("parcel_id", "box_ids", "model", "area_m2", "perimeter_m", "mean_proba")
#: Snapping to the pixel grid moves a coordinate by at most this fraction of a pixel.
_GRID_RTOL = 1e-3


def _empty_merged(crs: object) -> gpd.GeoDataFrame:
    frame = pd.DataFrame(
        {
            "parcel_id": pd.Series(dtype=object),
            "box_ids": pd.Series(dtype=object),
            "model": pd.Series(dtype=object),
            "area_m2": pd.Series(dtype=np.float64),
            "perimeter_m": pd.Series(dtype=np.float64),
            "mean_proba": pd.Series(dtype=np.float64),
        }
    )
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


# --------------------------------------------------------------------------------------------
# Tracing without simplification
# --------------------------------------------------------------------------------------------


def trace_eopatch(
    eopatch: EOPatch, *, box_id: str | None = None, model: str | None = None
) -> tuple[gpd.GeoDataFrame, shapely.Polygon]:
    """Unsimplified parcel polygons of a prediction EOPatch and its box, ready for :func:`merge_parcels`.

    :class:`VectoriseTask` on PRED_CULTIVATED (its PRED_INSTANCES when present; PRED_PROBA when
    present, else ``mean_proba`` is NaN) with ``simplify_tolerance_m=None`` and ``min_area_m2=0``; the EOPatch is not
    modified. ``box_id`` and ``model`` as in :class:`VectoriseTask`.
    """
    if eopatch.bbox is None:
        raise ValueError("the EOPatch has no bbox: the box outline and CRS come from it")
    if PRED_CULTIVATED not in eopatch:
        raise ValueError(f"the EOPatch has no {PRED_CULTIVATED[0].value}/{PRED_CULTIVATED[1]}: predict first")
    patch = EOPatch(bbox=eopatch.bbox)  # a new EOPatch: VectoriseTask writes PARCELS_PRED into it
    patch[PRED_CULTIVATED] = eopatch[PRED_CULTIVATED]
    has_proba = PRED_PROBA in eopatch
    if has_proba:
        patch[PRED_PROBA] = eopatch[PRED_PROBA]
    if PRED_INSTANCES in eopatch:  # touching fields split in the box: traced apart
        patch[PRED_INSTANCES] = eopatch[PRED_INSTANCES]
    patch.meta_info.update(eopatch.meta_info)
    task = VectoriseTask(
        proba_feature=PRED_PROBA if has_proba else None,
        min_area_m2=0.0,
        simplify_tolerance_m=None,
        box_id=box_id,
        model=model,
    )
    parcels = task.execute(patch)[PARCELS_PRED]
    minx, miny = eopatch.bbox.lower_left
    maxx, maxy = eopatch.bbox.upper_right
    return parcels, shapely.box(minx, miny, maxx, maxy)


def trace_boxes(
    masks: Sequence[np.ndarray],
    transforms: Sequence[Affine],
    crs: object,
    *,
    model: str,
    probas: Sequence[np.ndarray | None] | None = None,
    box_ids: Sequence[str] | None = None,
) -> tuple[list[gpd.GeoDataFrame], list[shapely.Polygon]]:
    """Unsimplified parcel polygons of (mask, transform) boxes: ``(frames, boxes)`` for :func:`merge_parcels`.

    ``masks``: 2-D boolean (or 0/1) arrays on the 2.5 m grid, north-up ``transforms`` (rasterio
    affine of each mask), one ``crs`` with an EPSG code (anything ``pyproj.CRS.from_user_input``
    takes). ``probas``: 2-D probability arrays like the masks (or None per box: ``mean_proba``
    NaN). ``box_ids`` default to ``box-0``, ``box-1``, ... Each box is traced by
    :class:`VectoriseTask` (4-connected components, ``rasterio.features.shapes``) without
    simplification and without the minimum-area filter.
    """
    if len(masks) != len(transforms):
        raise ValueError(f"{len(masks)} masks but {len(transforms)} transforms: give one transform per mask")
    if probas is not None and len(probas) != len(masks):
        raise ValueError(f"{len(probas)} probability arrays for {len(masks)} masks")
    if box_ids is not None and len(box_ids) != len(masks):
        raise ValueError(f"{len(box_ids)} box ids for {len(masks)} masks")
    epsg = pyproj.CRS.from_user_input(crs).to_epsg()
    if epsg is None:
        raise ValueError(f"CRS {crs!r} has no EPSG code: the boxes need one (e.g. EPSG:32633)")
    frames, boxes = [], []
    for i, (mask, transform) in enumerate(zip(masks, transforms, strict=True)):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask {i} has shape {mask.shape}: expected a 2-D (rows, cols) array")
        if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
            raise ValueError(f"transform {i} is not north-up (rotation or flipped axes): {transform!r}")
        rows, cols = mask.shape
        minx, maxy = transform.c, transform.f
        maxx, miny = minx + transform.a * cols, maxy + transform.e * rows
        patch = EOPatch(bbox=BBox((minx, miny, maxx, maxy), CRS(epsg)))
        patch[PRED_CULTIVATED] = mask.astype(bool)[..., None]
        proba = None if probas is None else probas[i]
        if proba is not None:
            proba = np.asarray(proba, dtype=np.float32)
            if proba.shape != mask.shape:
                raise ValueError(
                    f"proba {i} has shape {proba.shape}, mask {i} {mask.shape}: give equal shapes"
                )
            patch[PRED_PROBA] = proba[..., None]
        box_id = f"box-{i}" if box_ids is None else box_ids[i]
        frame, box = trace_eopatch(patch, box_id=box_id, model=model)
        frames.append(frame)
        boxes.append(box)
    return frames, boxes


# --------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------

#: Coordinates handled at once when scanning geometries vertex by vertex (bounds the memory).
_CHUNK_COORDS = 2_000_000
#: Polygons per call of ``shapely.coverage_simplify`` (see :func:`_simplify`).
_SIMPLIFY_BATCH = 1000


@dataclass(frozen=True)
class _SharedEdge:
    """The edge shared by boxes ``first`` and ``second``: ``axis`` 0 (x = ``at``, vertical) or 1 (y = ``at``)."""

    first: int
    second: int
    axis: int
    at: float
    low: float
    high: float


@dataclass
class _Parts:
    """The parcels of all frames, one row per part, in frame order."""

    geometries: np.ndarray
    frame: np.ndarray
    boxes: list[list[str]]
    model: np.ndarray
    proba: np.ndarray
    parcel_id: np.ndarray


def _box_polygon(box: object, crs: pyproj.CRS, index: int) -> shapely.Polygon:
    """A box as an axis-aligned shapely rectangle (BBox, shapely rectangle or (minx, miny, maxx, maxy))."""
    if isinstance(box, BBox):
        if box.crs.epsg != crs.to_epsg():
            raise ValueError(f"box {index} is in EPSG:{box.crs.epsg}, the parcels in {crs.to_string()}")
        (minx, miny), (maxx, maxy) = box.lower_left, box.upper_right
        return shapely.box(minx, miny, maxx, maxy)
    if isinstance(box, shapely.Geometry):
        if not isinstance(box, shapely.Polygon) or box.is_empty:
            raise ValueError(f"box {index} is a {box.geom_type}: give an axis-aligned rectangle")
        rectangle = shapely.box(*box.bounds)
        if not shapely.equals(box, rectangle):
            raise ValueError(f"box {index} is not an axis-aligned rectangle: {box.wkt[:80]}")
        return rectangle
    values = tuple(float(v) for v in box)  # type: ignore[attr-defined]
    if len(values) != 4:
        raise ValueError(f"box {index} has {len(values)} numbers: give (minx, miny, maxx, maxy)")
    return shapely.box(*values)


def _common_crs(frames: Sequence[gpd.GeoDataFrame]) -> pyproj.CRS:
    crs = frames[0].crs
    for i, frame in enumerate(frames):
        if frame.crs is None:
            raise ValueError(f"frame {i} has no CRS: set the CRS of every parcel layer")
        if not frame.crs.equals(crs):
            raise ValueError(
                f"frame {i} is in {frame.crs.to_string()}, frame 0 in {crs.to_string()}: "
                "reproject the parcel layers to one CRS (and its grid) before merging"
            )
    return pyproj.CRS.from_user_input(crs)


def _grid_origin(bounds: np.ndarray, resolution: float) -> tuple[float, float]:
    """The upper-left corner of the region; every box corner must be on its pixel grid."""
    origin_x, origin_y = float(bounds[:, 0].min()), float(bounds[:, 3].max())
    steps = np.concatenate([bounds[:, [0, 2]] - origin_x, origin_y - bounds[:, [1, 3]]], axis=1)
    steps /= resolution
    off = np.abs(steps - np.rint(steps)).max(axis=1)
    if (off > 1e-6).any():
        bad = int(np.flatnonzero(off > 1e-6)[0])
        raise ValueError(
            f"box {bad} {tuple(bounds[bad])} is not aligned to the {resolution:g} m grid of box corners "
            f"({origin_x:g}, {origin_y:g}): the boxes of a region share one pixel grid"
        )
    return origin_x, origin_y


def _shared_edges(boxes: np.ndarray, origin: tuple[float, float], resolution: float) -> list[_SharedEdge]:
    """Segments shared by two boxes, on the pixel grid; a ``ValueError`` when two boxes overlap."""
    first, second = shapely.STRtree(boxes).query(boxes, predicate="intersects")
    keep = first < second
    first, second = first[keep], second[keep]
    contact = shapely.intersection(boxes[first], boxes[second])
    overlap = shapely.area(contact) > 0
    if overlap.any():
        i, j = int(first[overlap][0]), int(second[overlap][0])
        raise ValueError(f"boxes {i} and {j} overlap: give the boxes of a grid, which only touch along edges")
    along = shapely.length(contact) > 0  # boxes meeting at a corner share no edge
    contact, first, second = contact[along], first[along], second[along]
    origin_xy = np.asarray(origin * 2)
    bounds = origin_xy + np.rint((shapely.bounds(contact) - origin_xy) / resolution) * resolution
    edges = []
    for i, j, (minx, miny, maxx, maxy) in zip(first, second, bounds, strict=True):
        if minx == maxx and miny < maxy:
            edges.append(_SharedEdge(int(i), int(j), 0, minx, miny, maxy))
        elif miny == maxy and minx < maxx:
            edges.append(_SharedEdge(int(i), int(j), 1, miny, minx, maxx))
    return edges


def _chunks(geometries: np.ndarray) -> list[slice]:
    """Consecutive slices of ``geometries`` holding about :data:`_CHUNK_COORDS` coordinates each."""
    if not len(geometries):
        return []
    chunk = np.cumsum(shapely.get_num_coordinates(geometries)) // _CHUNK_COORDS
    bounds = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(geometries)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _ring_coordinates(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates of ``geometries`` (``shapely.get_coordinates`` order) with their ring and geometry index."""
    parts, part_of = shapely.get_parts(geometries, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    return coords, ring, part_of[ring_of[ring]]


def _diagonal(coords: np.ndarray, ring: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """Per geometry: it has an edge along neither x nor y (it is no pixel polygon)."""
    step = np.diff(coords, axis=0)
    diagonal = (ring[1:] == ring[:-1]) & (step[:, 0] != 0) & (step[:, 1] != 0)
    flags = np.zeros(count, dtype=bool)
    flags[owner[1:][diagonal]] = True
    return flags


def _pixel_exact(geometries: np.ndarray) -> np.ndarray:
    """Per geometry: every edge runs along x or y (a pixel polygon, not a simplified one)."""
    exact = np.ones(len(geometries), dtype=bool)
    for chunk in _chunks(geometries):
        coords, ring, owner = _ring_coordinates(geometries[chunk])
        exact[chunk] = ~_diagonal(coords, ring, owner, chunk.stop - chunk.start)
    return exact


def _parcel_ids(geometries: np.ndarray) -> np.ndarray:
    """:func:`~s2agri.tasks.vectorise.parcel_ids` in chunks of bounded memory."""
    ids = np.empty(len(geometries), dtype=object)
    for chunk in _chunks(geometries):
        ids[chunk] = parcel_ids(geometries[chunk])
    return ids


def _collect(frames: Sequence[gpd.GeoDataFrame], boxes: np.ndarray, resolution: float) -> _Parts:
    """The parts of all frames with their attributes, checked (valid polygons inside their box)."""
    geometries, frame_of, box_lists, models, probas, ids = [], [], [], [], [], []
    pad = _GRID_RTOL * resolution
    for i, frame in enumerate(frames):
        if frame.empty:
            continue
        box_column = "box_ids" if "box_ids" in frame.columns else "box_id"
        missing = {box_column, "model", "mean_proba"} - set(frame.columns)
        if missing:
            raise ValueError(
                f"frame {i} lacks the columns {sorted(missing)}: give VectoriseTask or trace_boxes layers"
            )
        geoms = np.asarray(frame.geometry.values, dtype=object)
        polygonal = np.isin(shapely.get_type_id(geoms), (3, 6))  # Polygon, MultiPolygon
        if not polygonal.all() or shapely.is_empty(geoms).any():
            raise ValueError(f"frame {i} holds empty or non-polygonal geometries: give parcel polygons")
        valid = shapely.is_valid(geoms)
        if not valid.all():
            bad = int(np.flatnonzero(~valid)[0])
            raise ValueError(f"frame {i} row {bad} is invalid: {shapely.is_valid_reason(geoms[bad])}")
        minx, miny, maxx, maxy = boxes[i].bounds
        outline = shapely.box(minx - pad, miny - pad, maxx + pad, maxy + pad)
        if not shapely.covered_by(geoms, outline).all():
            raise ValueError(f"frame {i} holds polygons outside its box {boxes[i].bounds}")
        names = []
        for value in frame[box_column]:
            if not isinstance(value, str) or not value:
                raise ValueError(f"frame {i} has a row without box id ({value!r})")
            names.append(value.split(","))
        geometries.append(geoms)
        frame_of.append(np.full(len(geoms), i))
        box_lists.extend(names)
        models.append(frame["model"].astype(str).to_numpy(dtype=object))
        probas.append(frame["mean_proba"].to_numpy(dtype=np.float64))
        ids.append(
            frame["parcel_id"].to_numpy(dtype=object)
            if "parcel_id" in frame.columns
            else np.full(len(geoms), None, dtype=object)
        )
    if not geometries:
        return _Parts(np.zeros(0, dtype=object), np.zeros(0, int), [], *(np.zeros(0, dtype=object),) * 3)
    return _Parts(
        np.concatenate(geometries),
        np.concatenate(frame_of),
        box_lists,
        np.concatenate(models),
        np.concatenate(probas),
        np.concatenate(ids),
    )


def _edge_candidates(parts: _Parts, edges: list[_SharedEdge], pad: float) -> np.ndarray:
    """Indices of the parts whose bounds reach a shared edge (a superset of those touching one)."""
    if not edges or not len(parts.geometries):
        return np.zeros(0, dtype=np.int64)
    bounds = shapely.bounds(parts.geometries)
    touching = np.zeros(len(bounds), dtype=bool)
    for edge in edges:
        along = 1 - edge.axis  # the coordinate that runs along the edge
        near = (np.abs(bounds[:, edge.axis] - edge.at) <= pad) | (
            np.abs(bounds[:, edge.axis + 2] - edge.at) <= pad
        )
        inside = (bounds[:, along] <= edge.high + pad) & (bounds[:, along + 2] >= edge.low - pad)
        touching |= near & inside & np.isin(parts.frame, (edge.first, edge.second))
    return np.flatnonzero(touching)


def _edge_contacts(
    parts: _Parts,
    candidates: np.ndarray,
    edges: list[_SharedEdge],
    origin: tuple[float, float],
    resolution: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Snap the candidates to the pixel grid (in ``parts``) and find the pairs sharing pixel sides.

    Along every shared edge, each pixel side is painted with the part of either box that has it on
    its boundary; two parts facing each other on at least one pixel side are in contact (a
    shared boundary of positive length), parts meeting at a pixel corner are not.
    """
    geoms = parts.geometries[candidates]
    coords, ring, owner = _ring_coordinates(geoms)
    diagonal = _diagonal(coords, ring, owner, len(geoms))
    if diagonal.any():
        bad = int(candidates[np.flatnonzero(diagonal)[0]])
        raise ValueError(
            f"a parcel of frame {parts.frame[bad]} on a shared box edge is not a pixel polygon (it has "
            "diagonal edges: simplified?): merge the unsimplified polygons of trace_boxes / trace_eopatch "
            "or VectoriseTask(simplify_tolerance_m=None, min_area_m2=0) and simplify in merge_parcels"
        )
    origin_xy = np.asarray(origin)
    snapped = origin_xy + np.rint((coords - origin_xy) / resolution) * resolution
    worst = float(np.abs(snapped - coords).max()) if len(coords) else 0.0
    if worst > _GRID_RTOL * resolution:
        raise ValueError(
            f"parcel vertices on the box edges are up to {worst:g} m off the {resolution:g} m pixel grid: "
            "give the unsimplified pixel polygons (trace_boxes / trace_eopatch) in the CRS of the grid"
        )
    if worst > 0:
        parts.geometries[candidates] = shapely.transform(geoms, lambda _: snapped)

    # Segments of the candidates lying on a line that holds shared edges.
    same_ring = ring[1:] == ring[:-1]
    start, end, part = snapped[:-1][same_ring], snapped[1:][same_ring], candidates[owner[1:][same_ring]]
    pairs = []
    for axis in (0, 1):
        lines = np.unique([edge.at for edge in edges if edge.axis == axis])
        on_line = (start[:, axis] == end[:, axis]) & np.isin(start[:, axis], lines)
        s_start, s_end, s_part = start[on_line], end[on_line], part[on_line]
        for edge in (edge for edge in edges if edge.axis == axis):
            along = 1 - axis
            steps = round((edge.high - edge.low) / resolution)
            sides = []
            for box in (edge.first, edge.second):
                pick = (s_start[:, axis] == edge.at) & (parts.frame[s_part] == box)
                low = np.minimum(s_start[pick, along], s_end[pick, along])
                high = np.maximum(s_start[pick, along], s_end[pick, along])
                first = np.clip(np.rint((low - edge.low) / resolution).astype(np.int64), 0, steps)
                last = np.clip(np.rint((high - edge.low) / resolution).astype(np.int64), 0, steps)
                length = last - first
                offsets = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
                index = np.repeat(first, length) + offsets
                if np.bincount(index, minlength=steps).max(initial=0) > 1:
                    raise ValueError(
                        f"parcels of box {box} overlap along its edge with box {edge.first + edge.second - box}"
                    )
                side = np.full(steps, -1, dtype=np.int64)
                side[index] = np.repeat(s_part[pick], length)
                sides.append(side)
            facing = (sides[0] >= 0) & (sides[1] >= 0)
            pairs.append(np.stack([sides[0][facing], sides[1][facing]], axis=1))
    joined = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), dtype=np.int64)
    return joined[:, 0], joined[:, 1]


def _without_collinear(rings: np.ndarray) -> np.ndarray:
    """``rings`` (LinearRings along x and y) without the vertices in the middle of a straight side."""
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring[1:] != ring[:-1], True]
    coords, ring = coords[~closing], ring[~closing]
    starts = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    ends = np.r_[starts[1:], len(ring)] - 1
    prev, after = np.arange(len(ring)) - 1, np.arange(len(ring)) + 1
    prev[starts], after[ends] = ends, starts
    collinear = ((coords[prev, 0] == coords[:, 0]) & (coords[:, 0] == coords[after, 0])) | (
        (coords[prev, 1] == coords[:, 1]) & (coords[:, 1] == coords[after, 1])
    )
    _, ring = np.unique(ring[~collinear], return_inverse=True)
    return shapely.linearrings(coords[~collinear], indices=ring)


def _union(parts: np.ndarray) -> shapely.Polygon:
    """The exact union of edge-connected pixel polygons of adjacent boxes: one Polygon.

    Holes of a part are at least a pixel away from its box edges (a hole is enclosed by pixels
    of the part), so they are holes of the union as they are: only the outer rings are unioned
    (``shapely.union_all``, half the work of the full union for fields with many holes) and the
    holes put back. Vertices left in the middle of straight sides (where a ring crossed a box
    edge) are dropped. The area must equal the sum of the parts' areas; else, and for parts that
    are not Polygons, the plain ``shapely.union_all`` of the parts is used.
    """
    total = math.fsum(shapely.area(parts))
    polygons = shapely.get_parts(parts)
    rings, of = shapely.get_rings(polygons, return_index=True)
    is_shell = np.r_[True, of[1:] != of[:-1]]
    union = shapely.union_all(shapely.polygons(rings[is_shell]))
    if union.geom_type == "Polygon":
        outline = _without_collinear(shapely.get_rings(union))
        result = shapely.Polygon(outline[0], [*outline[1:], *rings[~is_shell]])
        if abs(result.area - total) <= 1e-9 * total:
            return result
    LOGGER.warning("outer-ring union of %d parts failed its checks: union_all of the parts", len(parts))
    return shapely.union_all(parts)


def _morton(col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Z-order (Morton) codes of non-negative integer cells: nearby cells get nearby codes."""

    def spread(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.uint64) & np.uint64(0xFFFFFFFF)
        for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F)):
            v = (v | (v << np.uint64(shift))) & np.uint64(mask)
        v = (v | (v << np.uint64(2))) & np.uint64(0x3333333333333333)
        return (v | (v << np.uint64(1))) & np.uint64(0x5555555555555555)

    return spread(col) | (spread(row) << np.uint64(1))


def _simplify_order(
    geometries: np.ndarray, keys: np.ndarray, origin: tuple[float, float], resolution: float
) -> np.ndarray:
    """The order in which the parcels are simplified: Z-order of the upper-left corners of their
    bounding boxes (pixels from the region's origin), ties by ``keys`` (the parcel ids)."""
    bounds = shapely.bounds(geometries)
    col = np.maximum(np.floor((bounds[:, 0] - origin[0]) / resolution), 0)
    row = np.maximum(np.floor((origin[1] - bounds[:, 3]) / resolution), 0)
    by_key = np.argsort(keys.astype(str), kind="stable")
    return by_key[np.argsort(_morton(col[by_key], row[by_key]), kind="stable")]


def _clip(geometries: np.ndarray, bounds: np.ndarray, margin: float) -> np.ndarray:
    """The polygonal parts of ``geometries`` within ``bounds`` grown by ``margin`` (vertices inside kept)."""
    rect = (bounds[0] - margin, bounds[1] - margin, bounds[2] + margin, bounds[3] + margin)
    extent = shapely.bounds(geometries)
    beyond = (
        (extent[:, 0] < rect[0])
        | (extent[:, 1] < rect[1])
        | (extent[:, 2] > rect[2])
        | (extent[:, 3] > rect[3])
    )
    if beyond.any():
        geometries = geometries.copy()
        geometries[beyond] = shapely.clip_by_rect(geometries[beyond], *rect)
    keep = np.isin(shapely.get_type_id(geometries), (3, 6)) & ~shapely.is_empty(geometries)
    return geometries[keep]


def _simplify(geometries: np.ndarray, tolerance: float, margin: float) -> np.ndarray:
    """``shapely.coverage_simplify(geometries, tolerance)``, computed in batches; the same result.

    GEOS's coverage simplification takes time quadratic in the number of polygons of a call (16 000
    separate squares take 10x as long as 4 000; GEOS 3.14), which makes one call over a region of
    hundreds of boxes impractical. GEOS simplifies the coverage edges one after the other, in
    input order, each against the current state of the edges whose envelopes meet its corners
    (earlier edges simplified, later ones as given). So the parcels are cut into batches of
    :data:`_SIMPLIFY_BATCH` consecutive polygons (spatially compact, see
    :func:`_simplify_order`), and each batch is simplified together with its *halo*, the other
    parcels whose bounding boxes meet those of the batch, frozen: in their simplified state for
    earlier batches and as given for later ones, exactly what a single call would see. A halo is
    frozen by giving each batch polygon twice, with ``simplify_boundary=False``: the edges of
    the batch are then shared by two rings (inner edges, simplified) while the halo's edges are
    boundary edges (constraints, unchanged). The tests check that the result equals one call.
    """
    count = len(geometries)
    if count <= _SIMPLIFY_BATCH:
        return shapely.coverage_simplify(geometries, tolerance)
    result = geometries.copy()
    tree = shapely.STRtree(geometries)
    for start in range(0, count, _SIMPLIFY_BATCH):
        stop = min(start + _SIMPLIFY_BATCH, count)
        batch = geometries[start:stop]
        halo = np.unique(tree.query(batch)[1])
        halo = halo[(halo < start) | (halo >= stop)]
        frozen = np.where(halo < start, result[halo], geometries[halo])  # earlier: simplified
        frozen = _clip(frozen, shapely.total_bounds(batch), margin)
        simplified = shapely.coverage_simplify(
            np.concatenate([batch, batch, frozen]), tolerance, simplify_boundary=False
        )
        result[start:stop] = simplified[: stop - start]
    return result


def merge_parcels(
    frames: Sequence[gpd.GeoDataFrame],
    boxes: Sequence[object],
    *,
    tolerance: float | None = 2.5,
    min_area_m2: float = 400.0,
    resolution: float = contract.TARGET_RESOLUTION_M,
) -> gpd.GeoDataFrame:
    """One parcel layer of a region from the parcel layers of its boxes, seamless across box edges.

    ``frames[i]`` holds the parcels traced in ``boxes[i]`` (a ``sentinelhub.BBox``, an
    axis-aligned shapely rectangle or ``(minx, miny, maxx, maxy)``, in the parcels' CRS), with
    the columns of :data:`~s2agri.tasks.vectorise.PARCEL_COLUMNS` (``box_ids`` instead of
    ``box_id`` and an optional ``parcel_id`` are accepted, so a merged layer can be merged
    again). Boxes must not overlap and their corners must lie on one ``resolution`` grid; every
    polygon must be valid and inside its box.

    Parts touching an edge shared by two boxes must be **unsimplified pixel polygons**
    (:func:`trace_boxes`, :func:`trace_eopatch`); parts sharing at least one pixel side across
    a box edge are unioned exactly (corner contacts do not merge). Then:

    * ``min_area_m2``: parcels whose pixel area (area of the unsimplified polygon) is smaller are
      dropped; geometries that are no pixel polygons (already simplified) are kept as they are.
    * ``tolerance`` (m; None or 0: keep pixel edges): ``shapely.coverage_simplify`` over all
      parcels of the region at once, so neighbours keep their shared vertices; invalid results
      are repaired as in :class:`VectoriseTask`. Rings are normalised first (the result of the
      simplification depends on where a ring starts), so the output is the same whatever the
      boxes and their order: merging the boxes of a region gives the parcels of the region
      traced as one box.

    Columns :data:`MERGED_COLUMNS` + ``geometry`` (normalised), rows sorted by ``parcel_id``:

    * ``parcel_id``: ``E<x>N<y>``, the upper-left corner of the top-left pixel of the parcel
      (highest vertex, then leftmost, of the unsimplified polygon): unique in the region and the
      same whatever the frame order, the tolerance or the extent of the region. A part that is
      not merged keeps its ``parcel_id`` when it has one.
    * ``box_ids``: sorted, comma-separated ids of the boxes the parcel spans.
    * ``model``: the parts' model; parts of different models raise a ``ValueError``.
    * ``mean_proba``: mean of the parts' ``mean_proba`` weighted by their pixel areas (the mean
      over the parcel's pixels); NaN parts are left out, NaN when all are.
    * ``area_m2``, ``perimeter_m``: of the output geometry (after simplification).

    Output geometries are valid (Polygons; MultiPolygons only from MultiPolygon inputs), with no
    overlap between parcels. Merging the output again as one frame in one box (with the
    same arguments) returns it unchanged.
    """
    if len(frames) != len(boxes):
        raise ValueError(f"{len(frames)} parcel layers but {len(boxes)} boxes: give one box per layer")
    if not frames:
        raise ValueError("no parcel layer given: pass the layers of the boxes of a region")
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"tolerance={tolerance} is negative: give 0 or None to keep pixel edges")
    if min_area_m2 < 0:
        raise ValueError(f"min_area_m2={min_area_m2} is negative: give 0 to keep every parcel")
    if resolution <= 0:
        raise ValueError(f"resolution={resolution} must be positive")
    crs = _common_crs(frames)
    box_polygons = np.array([_box_polygon(box, crs, i) for i, box in enumerate(boxes)], dtype=object)
    origin = _grid_origin(shapely.bounds(box_polygons), resolution)
    edges = _shared_edges(box_polygons, origin, resolution)
    parts = _collect(frames, box_polygons, resolution)
    count = len(parts.geometries)
    if not count:
        return _empty_merged(crs)

    # The graph of parts facing each other across a shared box edge; its components are parcels.
    candidates = _edge_candidates(parts, edges, _GRID_RTOL * resolution)
    left = right = np.zeros(0, dtype=np.int64)
    if len(candidates):
        left, right = _edge_contacts(parts, candidates, edges, origin, resolution)
    graph = sparse.coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(count, count))
    n_groups, group = connected_components(graph, directed=False)

    # Parts on their own keep geometry, attributes and parcel_id; edge-connected groups are unioned.
    geoms, probas, models = parts.geometries, parts.proba, parts.model
    sizes = np.bincount(group, minlength=n_groups)
    single = sizes[group] == 1
    raw_area = shapely.area(geoms)
    area = np.bincount(group, weights=raw_area, minlength=n_groups)
    merged = np.empty(n_groups, dtype=object)
    merged[group[single]] = geoms[single]
    mean_proba = np.full(n_groups, np.nan)
    mean_proba[group[single]] = probas[single]
    group_model = np.empty(n_groups, dtype=object)
    group_model[group] = models
    group_boxes: list[set[str]] = [set() for _ in range(n_groups)]
    for g, names in zip(group, parts.boxes, strict=True):
        group_boxes[g].update(names)
    parcel_id = np.full(n_groups, None, dtype=object)
    parcel_id[group[single]] = parts.parcel_id[single]
    multi = np.flatnonzero(sizes > 1)
    if len(multi):
        members = pd.Series(np.arange(count)).groupby(group).indices
        for g in multi:
            ids = members[g]
            if len(set(models[ids])) > 1:
                raise ValueError(
                    f"a parcel spans boxes {sorted(group_boxes[g])} predicted by different models "
                    f"{sorted(set(models[ids]))}: merge layers of one model"
                )
            merged[g] = _union(geoms[ids])
            # Pixel-area weighted mean; fsum is exact, so the frame order does not change a bit.
            finite = ids[np.isfinite(probas[ids])]
            if len(finite):
                weights = raw_area[finite]
                mean_proba[g] = math.fsum(weights * probas[finite]) / math.fsum(weights)
        parcel_id[multi] = _parcel_ids(merged[multi])
    todo = np.flatnonzero(pd.isna(parcel_id))
    if len(todo):
        parcel_id[todo] = _parcel_ids(merged[todo])

    small = np.flatnonzero(area < min_area_m2 * (1 - 1e-12))
    kept = np.ones(n_groups, dtype=bool)
    kept[small] = ~_pixel_exact(merged[small])  # simplified ones passed the filter before
    if len(set(parcel_id[kept])) != kept.sum():
        raise ValueError("merged parcels have duplicate parcel_id values: the input parcel_id columns clash")
    kept = np.flatnonzero(kept)
    kept = kept[np.argsort(parcel_id[kept].astype(str), kind="stable")]  # the output order
    merged, parcel_id, group_model, mean_proba = (
        merged[kept],
        parcel_id[kept],
        group_model[kept],
        mean_proba[kept],
    )
    box_ids = np.array([",".join(sorted(group_boxes[g])) for g in kept], dtype=object)

    # Normalised rings (fixed start vertex and orientation) in a fixed spatial order: the
    # simplification depends on both, so the output is the same however the parts were traced,
    # given or unioned.
    merged = shapely.normalize(merged)
    if tolerance and len(merged):
        order = _simplify_order(merged, parcel_id, origin, resolution)
        simplified = np.empty_like(merged)
        simplified[order] = _simplify(merged[order], tolerance, resolution)
        merged = shapely.normalize(simplified)
        invalid = np.flatnonzero(~shapely.is_valid(merged))
        if len(invalid):
            LOGGER.debug("repairing %d invalid merged parcels with make_valid", len(invalid))
            merged[invalid] = [_polygonal(merged[i]) for i in invalid]
            nonempty = ~shapely.is_empty(merged)
            merged, parcel_id, group_model = merged[nonempty], parcel_id[nonempty], group_model[nonempty]
            mean_proba, box_ids = mean_proba[nonempty], box_ids[nonempty]
            if not shapely.is_valid(merged).all():
                raise RuntimeError("merging produced invalid geometries after make_valid")
    elif len(multi):
        unions = np.flatnonzero(np.isin(kept, multi))
        invalid = unions[~shapely.is_valid(merged[unions])]
        if len(invalid):
            raise RuntimeError(f"{len(invalid)} unions of parcels across box edges are invalid")

    result = gpd.GeoDataFrame(
        {
            "parcel_id": parcel_id,
            "box_ids": box_ids,
            "model": group_model,
            "area_m2": shapely.area(merged),
            "perimeter_m": shapely.length(merged),
            "mean_proba": mean_proba,
        },
        geometry=merged,
        crs=crs,
    )
    if result.empty:
        return _empty_merged(crs)
    LOGGER.info(
        "merged %d parts of %d boxes into %d parcels (%d across box edges, %d below %g m2 dropped)",
        count,
        len(frames),
        len(result),
        len(multi),
        n_groups - len(kept),
        min_area_m2,
    )
    return result

"""A 2.5 m agricultural landscape as polygons, consistent in world coordinates.

The world is cut into blocks (a Voronoi tessellation of hashed points, ~600 m apart, bounded by
roads); smooth world fields decide each block's land use (forest, settlement, water, farmland);
farmland blocks are cut into elongated, rotated parcels separated by narrow paths, with log-normal
areas. Every block and parcel has a stable id, so boxes generated independently agree at their
edges and a region's parcels can be merged by id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely

from .noise import fractal_noise_points, hash_uint64, hash_uniform, stream_id
from .phenology import ARCHETYPE_OF_LABEL, Archetype

CRS_EPSG = 32633
BLOCK_CELL_M = 600.0  #: world cell holding 1-2 block seeds
ROAD_HALF_WIDTH_M = 3.5
PATH_HALF_WIDTH_M = 1.25
MIN_PARCEL_AREA_M2 = 25.0

#: Label shares of farmland parcels that are not grassland (renormalised to 1 - grass share).
_ARABLE_SHARES: dict[int, float] = {
    2: 0.17, 3: 0.13, 4: 0.06, 8: 0.03, 9: 0.03, 5: 0.04, 23: 0.03, 12: 0.03, 7: 0.02, 10: 0.02,
    11: 0.03, 17: 0.01, 19: 0.01, 6: 0.015, 15: 0.005, 20: 0.01, 25: 0.008, 27: 0.03, 30: 0.03,
    100: 0.035, 1600: 0.02, 1410: 0.01, 1500: 0.015, 1800: 0.005, 5000: 0.005, 22: 0.003, 14: 0.003,
    18: 0.002, 13: 0.002, 16: 0.002, 24: 0.005, 29: 0.003, 21: 0.005, 26: 0.002, 28: 0.002, 1420: 0.003,
}  # fmt: skip
_ARABLE_CODES = np.array(list(_ARABLE_SHARES), dtype=np.int64)
_ARABLE_P = np.array(list(_ARABLE_SHARES.values()))
_ARABLE_P = _ARABLE_P / _ARABLE_P.sum()


@dataclass(frozen=True)
class LandUse:
    FARMLAND = 0
    FOREST = 1
    SETTLEMENT = 2
    WATER = 3
    WETLAND = 4


def _block_seeds(seed: int, bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Block seed points (x, y) and their stable ids for all world cells overlapping ``bounds``."""
    minx, miny, maxx, maxy = bounds
    cx = np.arange(np.floor(minx / BLOCK_CELL_M), np.floor(maxx / BLOCK_CELL_M) + 1, dtype=np.int64)
    cy = np.arange(np.floor(miny / BLOCK_CELL_M), np.floor(maxy / BLOCK_CELL_M) + 1, dtype=np.int64)
    grid_x, grid_y = np.meshgrid(cx, cy)
    gx, gy = grid_x.ravel(), grid_y.ravel()
    stream = stream_id("blocks")
    xs, ys, ids = [], [], []
    n_points = 1 + (hash_uniform(seed, stream, gx, gy, 0) < 0.6)
    for k in range(2):
        keep = n_points > k
        ux = hash_uniform(seed, stream, gx[keep], gy[keep], 10 + k)
        uy = hash_uniform(seed, stream, gx[keep], gy[keep], 20 + k)
        xs.append((gx[keep] + ux) * BLOCK_CELL_M)
        ys.append((gy[keep] + uy) * BLOCK_CELL_M)
        ids.append((hash_uint64(seed, stream, gx[keep], gy[keep], k) >> np.uint64(2)).astype(np.int64))
    return np.column_stack([np.concatenate(xs), np.concatenate(ys)]), np.concatenate(ids)


def _land_use(seed: int, points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    forest = fractal_noise_points(seed, stream_id("forest"), x, y, (4500.0, 1800.0))
    urban = fractal_noise_points(seed, stream_id("urban"), x, y, (3000.0, 1000.0))
    water = fractal_noise_points(seed, stream_id("water"), x, y, (5000.0, 1500.0))
    use = np.full(len(points), LandUse.FARMLAND)
    use[forest > 0.75] = LandUse.FOREST
    use[urban > 1.45] = LandUse.SETTLEMENT
    use[(water > 1.9) & (use == LandUse.FARMLAND)] = LandUse.WATER
    use[(water > 1.6) & (water <= 1.9) & (use == LandUse.FARMLAND)] = LandUse.WETLAND
    return use


def _rotated_rectangles(
    x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray, theta: float, origin: np.ndarray
) -> np.ndarray:
    corners = np.stack(
        [np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)],
        axis=1,
    )
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    corners = corners @ rot.T + origin
    return shapely.polygons(np.concatenate([corners, corners[:, :1]], axis=1))


def _cut_block(block: shapely.Geometry, rng: np.random.Generator) -> np.ndarray:
    """Cut a farmland block into elongated, rotated parcels separated by paths."""
    theta = rng.uniform(0.0, np.pi)
    origin = np.array(shapely.centroid(block).coords[0])
    c, s = np.cos(-theta), np.sin(-theta)
    local = (np.asarray(block.exterior.coords) - origin) @ np.array([[c, -s], [s, c]]).T
    (lx0, ly0), (lx1, ly1) = local.min(0), local.max(0)
    width_median = rng.uniform(18.0, 40.0)
    length_median = rng.uniform(70.0, 200.0)
    widths = np.clip(rng.lognormal(np.log(width_median), 0.55, 400), 6.0, 180.0)
    xs = lx0 + np.concatenate([[0.0], np.cumsum(widths)])
    xs = xs[: np.searchsorted(xs, lx1) + 1]
    rects_x0, rects_x1, rects_y0, rects_y1 = [], [], [], []
    for a, b in itertools.pairwise(xs):
        lengths = np.clip(rng.lognormal(np.log(length_median), 0.7, 200), 12.0, 700.0)
        ys = ly0 - rng.uniform(0.0, length_median) + np.concatenate([[0.0], np.cumsum(lengths)])
        ys = ys[: np.searchsorted(ys, ly1) + 1]
        rects_x0.append(np.full(len(ys) - 1, a))
        rects_x1.append(np.full(len(ys) - 1, b))
        rects_y0.append(ys[:-1])
        rects_y1.append(ys[1:])
    rects = _rotated_rectangles(
        np.concatenate(rects_x0), np.concatenate(rects_x1), np.concatenate(rects_y0), np.concatenate(rects_y1),
        theta, origin,
    )  # fmt: skip
    parcels = shapely.buffer(shapely.intersection(rects, block), -PATH_HALF_WIDTH_M, join_style="mitre")
    return parcels[~shapely.is_empty(parcels) & (shapely.area(parcels) >= MIN_PARCEL_AREA_M2)]


def _farmland_labels(rng: np.random.Generator, n: int, grass_share: float) -> np.ndarray:
    labels = rng.choice(_ARABLE_CODES, size=n, p=_ARABLE_P)
    labels[rng.random(n) < grass_share] = 1
    return labels


def generate_landscape(
    seed: int, bounds: tuple[float, float, float, float], margin: float = 0.0
) -> gpd.GeoDataFrame:
    """All polygons (blocks and parcels) intersecting ``bounds`` grown by ``margin`` (EPSG:32633 metres).

    Columns: ``id`` (stable int64), ``label`` (challenge code), ``archetype`` (phenology archetype),
    ``block_id``, ``block_use`` and ``geometry``. Polygons are whole (not clipped to the bounds).
    """
    minx, miny, maxx, maxy = bounds
    area = (minx - margin, miny - margin, maxx + margin, maxy + margin)
    reach = 3 * BLOCK_CELL_M
    points, block_ids = _block_seeds(
        seed, (area[0] - reach, area[1] - reach, area[2] + reach, area[3] + reach)
    )
    extent = shapely.box(area[0] - 2 * reach, area[1] - 2 * reach, area[2] + 2 * reach, area[3] + 2 * reach)
    cells = shapely.get_parts(
        shapely.voronoi_polygons(shapely.multipoints(points), extend_to=extent, ordered=True)
    )
    area_box = shapely.box(*area)
    near = shapely.intersects(cells, area_box)
    cells, points, block_ids = cells[near], points[near], block_ids[near]
    uses = _land_use(seed, points)
    grass_share = np.clip(
        0.32 + 0.12 * fractal_noise_points(seed, stream_id("grass"), points[:, 0], points[:, 1], (3000.0,)),
        0.12,
        0.6,
    )

    geoms: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    owner_uses: list[np.ndarray] = []
    for cell, block_id, use, grass in zip(cells, block_ids, uses, grass_share, strict=True):
        rng = np.random.default_rng([seed, int(block_id)])
        if use == LandUse.FOREST:
            parts, codes = np.array([cell]), np.array([2000])
        elif use == LandUse.WATER:
            parts, codes = np.array([cell.buffer(-ROAD_HALF_WIDTH_M - 15.0)]), np.array([7000])
        elif use == LandUse.WETLAND:
            parts = np.array([cell.buffer(-ROAD_HALF_WIDTH_M)])
            codes = np.array([rng.choice([4100, 4210, 4220])])
        elif use == LandUse.SETTLEMENT:
            parts, codes = np.array([cell.buffer(-ROAD_HALF_WIDTH_M)]), np.array([3000])
        else:
            shrunk = cell.buffer(-ROAD_HALF_WIDTH_M, join_style="mitre")
            kind = rng.random()
            if kind < 0.10:  # one large meadow
                parts, codes = np.array([shrunk]), np.array([1])
            else:
                parts = _cut_block(shrunk, rng)
                codes = _farmland_labels(rng, len(parts), float(grass))
        keep = ~shapely.is_empty(parts)
        parts, codes = parts[keep], codes[keep]
        geoms.append(parts)
        labels.append(codes)
        ids.append((hash_uint64(block_id, np.arange(len(parts))) >> np.uint64(2)).astype(np.int64))
        owners.append(np.full(len(parts), block_id))
        owner_uses.append(np.full(len(parts), use))

    geometry = np.concatenate(geoms)
    frame = gpd.GeoDataFrame(
        {
            "id": np.concatenate(ids),
            "label": np.concatenate(labels).astype(np.int64),
            "block_id": np.concatenate(owners),
            "block_use": np.concatenate(owner_uses).astype(np.int64),
        },
        geometry=geometry,
        crs=f"EPSG:{CRS_EPSG}",
    )
    frame = frame[frame.intersects(area_box)].reset_index(drop=True)
    frame["archetype"] = [ARCHETYPE_OF_LABEL[int(code)].value for code in frame["label"]]
    forest = frame["label"] == 2000
    conifer = hash_uniform(seed, stream_id("conifer"), frame.loc[forest, "block_id"].to_numpy()) < 0.35
    frame.loc[forest[forest].index[conifer], "archetype"] = Archetype.FOREST_CONIFEROUS.value
    return frame


def blocks_for(seed: int, bounds: tuple[float, float, float, float]) -> gpd.GeoDataFrame:
    """Block (Voronoi cell) polygons with their land use; the space between polygons are roads and paths."""
    reach = 3 * BLOCK_CELL_M
    points, block_ids = _block_seeds(
        seed, (bounds[0] - reach, bounds[1] - reach, bounds[2] + reach, bounds[3] + reach)
    )
    extent = shapely.box(
        bounds[0] - 2 * reach, bounds[1] - 2 * reach, bounds[2] + 2 * reach, bounds[3] + 2 * reach
    )
    cells = shapely.get_parts(
        shapely.voronoi_polygons(shapely.multipoints(points), extend_to=extent, ordered=True)
    )
    near = shapely.intersects(cells, shapely.box(*bounds))
    return gpd.GeoDataFrame(
        {"block_id": block_ids[near], "block_use": _land_use(seed, points[near])},
        geometry=cells[near],
        crs=f"EPSG:{CRS_EPSG}",
    )

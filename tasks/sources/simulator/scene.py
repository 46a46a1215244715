"""Simulate one box: landscape -> 2.5 m end-member scene -> sensor -> atmosphere -> L2A-like EOPatch."""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio.features
from eolearn.core import EOPatch
from rasterio.transform import from_origin
from scipy import ndimage
from scipy.special import ndtri
from sentinelhub import CRS, BBox

from ... import contract
from .landscape import LandUse, blocks_for, generate_landscape
from .noise import fractal_noise_grid, hash_uniform, stream_id
from .phenology import Archetype, ParcelParameters, endmember_fractions
from .sensor import PSF_SIGMA_M, SCENE_RESOLUTION_M, apply_separable, footprint_operator, nearest_to_10m
from .spectra import CLOUD_SPECTRUM, ENDMEMBER_SPECTRA, HAZE_SPECTRUM, NOISE_SIGMA, Endmember

LOGGER = logging.getLogger(__name__)

SCENE_MARGIN_M = 160.0  #: scene simulated around the box so that the PSF never sees an edge
SEASON_START = dt.date(2019, 3, 1)
SEASON_END = dt.date(2019, 9, 1)
REVISIT_DAYS = 5
#: Acquisition times of the two relative orbits (UTC).
ORBIT_TIMES = (dt.time(10, 0, 29), dt.time(10, 10, 21))
MISREGISTRATION_M = 5.0  #: up to 0.5 px at 10 m
BAND_GROUPS = {
    res: [i for i, b in enumerate(contract.BAND_NAMES) if contract.BAND_RESOLUTION_M[b] == res]
    for res in (10, 20, 60)
}


def season_candidates(seed: int) -> list[list[dt.datetime]]:
    """Acquisition dates of the two relative orbits over the season (5-day revisit each)."""
    offset = int(hash_uniform(seed, stream_id("orbit"), 0) * REVISIT_DAYS)
    orbits = []
    for k, when in enumerate(ORBIT_TIMES):
        first = SEASON_START + dt.timedelta(days=(offset + 2 * k) % REVISIT_DAYS)
        n = (SEASON_END - first).days // REVISIT_DAYS + 1
        orbits.append(
            [dt.datetime.combine(first + dt.timedelta(days=REVISIT_DAYS * i), when) for i in range(n)]
        )
    return orbits


def max_frames(seed: int = 0) -> int:
    """The most acquisitions a box can have (both orbits)."""
    return sum(len(orbit) for orbit in season_candidates(seed))


def cloud_cover_target(seed: int, when: dt.datetime) -> float:
    """Regional cloud cover of one acquisition: clear, broken, cloudy or overcast."""
    key = when.toordinal() * 24 + when.hour
    u, v = hash_uniform(seed, stream_id("cover"), key, 0), hash_uniform(seed, stream_id("cover"), key, 1)
    if u < 0.38:
        return float(0.03 * v)
    if u < 0.66:
        return float(0.03 + 0.27 * v)
    if u < 0.86:
        return float(0.30 + 0.40 * v)
    return float(0.70 + 0.30 * v)


def acquisition_dates(seed: int, bbox: BBox, frames_min: int, frames_max: int) -> list[dt.datetime]:
    """The box's acquisitions: T uniform in [frames_min, frames_max], clearer dates more likely kept."""
    orbits = season_candidates(seed)
    rng = np.random.default_rng([seed, stream_id("dates"), *(round(c) for c in bbox)])
    n = int(rng.integers(frames_min, frames_max + 1))
    centre_x, centre_y = bbox.middle
    overlap = hash_uniform(seed, stream_id("overlap"), int(centre_x // 20000), int(centre_y // 20000)) < 0.35
    candidates = orbits[0] + (orbits[1] if overlap or n > len(orbits[0]) else [])
    if n > len(candidates):
        raise ValueError(f"{n} frames requested but the season has {len(candidates)} acquisitions")
    keep_weight = np.array([1.15 - cloud_cover_target(seed, when) for when in candidates])
    chosen = rng.choice(len(candidates), size=n, replace=False, p=keep_weight / keep_weight.sum())
    return sorted(candidates[i] for i in chosen)


@dataclass
class _Grid:
    """World coordinates of the 2.5 m scene and of the 10 m box."""

    bbox: BBox
    width_px: int
    height_px: int

    @property
    def scene_shape(self) -> tuple[int, int]:
        margin = int(SCENE_MARGIN_M / SCENE_RESOLUTION_M)
        return self.height_px * 4 + 2 * margin, self.width_px * 4 + 2 * margin

    @property
    def scene_transform(self):
        return from_origin(self.bbox.min_x - SCENE_MARGIN_M, self.bbox.max_y + SCENE_MARGIN_M, 2.5, 2.5)

    def scene_axes(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.scene_shape
        xs = self.bbox.min_x - SCENE_MARGIN_M + (np.arange(w) + 0.5) * SCENE_RESOLUTION_M
        ys = self.bbox.max_y + SCENE_MARGIN_M - (np.arange(h) + 0.5) * SCENE_RESOLUTION_M
        return xs, ys

    def box_axes(self) -> tuple[np.ndarray, np.ndarray]:
        xs = self.bbox.min_x + (np.arange(self.width_px) + 0.5) * 10.0
        ys = self.bbox.max_y - (np.arange(self.height_px) + 0.5) * 10.0
        return xs, ys


def _object_map(seed: int, grid: _Grid, polygons) -> np.ndarray:
    """Index of the object under each 2.5 m scene sample: 0 road, 1 farm path, 2 + i polygon i."""
    h, w = grid.scene_shape
    bounds = (grid.bbox.min_x - SCENE_MARGIN_M, grid.bbox.min_y - SCENE_MARGIN_M,
              grid.bbox.max_x + SCENE_MARGIN_M, grid.bbox.max_y + SCENE_MARGIN_M)  # fmt: skip
    blocks = blocks_for(seed, bounds)
    # gaps between polygons are farm paths (grass and soil) in farmland and on shores, roads elsewhere
    open_land = blocks["block_use"].isin([LandUse.FARMLAND, LandUse.WATER, LandUse.WETLAND])
    farmland = blocks.geometry[open_land]
    objects = np.zeros((h, w), dtype=np.int32)
    if len(farmland):
        rasterio.features.rasterize(
            ((geom, 1) for geom in farmland), out=objects, transform=grid.scene_transform, all_touched=False
        )
    shapes = ((geom, i + 2) for i, geom in enumerate(polygons.geometry))
    rasterio.features.rasterize(shapes, out=objects, transform=grid.scene_transform, all_touched=False)
    return objects


def _texture_multipliers(seed: int, grid: _Grid) -> list[np.ndarray | None]:
    """Within-parcel variability: multiplicative, spatially correlated maps per end-member (None = 1)."""
    xs, ys = grid.scene_axes()
    fine = fractal_noise_grid(seed, stream_id("texture1"), xs, ys, (7.5, 25.0))
    coarse = fractal_noise_grid(seed, stream_id("texture2"), xs, ys, (10.0, 40.0))
    canopy = np.clip(1.0 + 0.12 * fine, 0.0, None)
    ground = np.clip(1.0 + 0.08 * coarse, 0.0, None)
    urban = np.clip(1.0 + 0.35 * fine, 0.0, None)
    textures: list[np.ndarray | None] = [None] * len(Endmember)
    textures[Endmember.VEG] = textures[Endmember.VEG_DARK] = textures[Endmember.FLOWER] = canopy
    textures[Endmember.DRY] = textures[Endmember.SOIL] = ground
    textures[Endmember.URBAN] = urban
    return textures


def _cloud_fields(seed: int, grid: _Grid, when: dt.datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cloud opacity, shadow opacity and haze intensity at 10 m for one acquisition."""
    xs, ys = grid.box_axes()
    key = when.toordinal() * 24 + when.hour
    cover = cloud_cover_target(seed, when)
    scales = (3000.0, 1200.0, 500.0, 200.0, 80.0)
    stream = stream_id("clouds") + key
    threshold = float(ndtri(1.0 - np.clip(cover, 1e-4, 1 - 1e-4)))

    def opacity(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        field = fractal_noise_grid(seed, stream, x, y, scales, gain=0.6)
        thickness = np.clip((field - threshold) / 0.5, 0.0, None)
        return (1.0 - np.exp(-2.5 * thickness)).astype(np.float32)

    alpha = opacity(xs, ys)
    length = 150.0 + 450.0 * hash_uniform(seed, stream_id("shadow"), key)
    azimuth = np.deg2rad(145.0 + 15.0 * hash_uniform(seed, stream_id("shadow"), key, 1))
    # the shadow at p is cast by the cloud towards the sun (south-east) of p
    shadow = opacity(xs + length * np.sin(azimuth), ys + length * np.cos(azimuth))
    hazy = hash_uniform(seed, stream_id("haze"), key) < 0.25
    haze = np.zeros_like(alpha)
    if hazy:
        amp = 0.05 + 0.2 * hash_uniform(seed, stream_id("haze"), key, 1)
        field = fractal_noise_grid(seed, stream_id("haze") + key, xs, ys, (4000.0, 1500.0))
        haze = (amp * np.clip(0.5 + 0.35 * field, 0.0, 1.0)).astype(np.float32)
    return alpha, shadow, haze


def _at_native(field: np.ndarray, res: int) -> np.ndarray:
    """Mean of a 10 m field over the native pixels of a ``res`` m band, nearest-resampled back to 10 m."""
    factor = res // 10
    if factor == 1:
        return field
    h, w = field.shape
    ph, pw = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.pad(field, ((0, ph - h), (0, pw - w)), mode="edge")
    coarse = padded.reshape(ph // factor, factor, pw // factor, factor).mean(axis=(1, 3))
    return nearest_to_10m(coarse, res, (h, w))


def _no_data(seed: int, grid: _Grid, when: dt.datetime) -> np.ndarray:
    """IS_DATA: occasionally a tilted strip beyond an orbit's swath edge has no data."""
    key = when.toordinal() * 24 + when.hour
    xs, ys = grid.box_axes()
    valid = np.ones((ys.size, xs.size), dtype=bool)
    if hash_uniform(seed, stream_id("swath"), key) >= 0.12:
        return valid
    spacing = 7000.0
    offset = spacing * hash_uniform(seed, stream_id("swath"), key, 1)
    width = 400.0 + 2600.0 * hash_uniform(seed, stream_id("swath"), key, 2)
    along = xs[None, :] - offset - (ys[:, None] - 5.0e6) * np.tan(np.deg2rad(12.0))
    return valid & (np.mod(along, spacing) >= width)


def _scene_classification(refl: np.ndarray, alpha: np.ndarray, shadow: np.ndarray, haze: np.ndarray,
                          valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Sen2Cor-like SCL consistent with the simulated scene."""
    b = contract.BAND_INDEX
    nir, red, green = refl[..., b["B08"]], refl[..., b["B04"]], refl[..., b["B03"]]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    ndwi = (green - nir) / np.maximum(green + nir, 1e-6)
    scl = np.full(alpha.shape, 5, dtype=np.uint8)  # not vegetated
    scl[ndvi > 0.4] = 4  # vegetation
    scl[nir < 0.06] = 2  # dark area
    scl[(ndwi > 0.2) & (nir < 0.08)] = 6  # water
    scl[rng.random(alpha.shape) < 0.003] = 7  # unclassified
    scl[(shadow > 0.25) & (alpha < 0.3)] = 3  # cloud shadow
    scl[(haze > 0.12) & (alpha < 0.35)] = 10  # thin cirrus
    scl[(alpha >= 0.35) & (alpha < 0.7)] = 8  # cloud medium probability
    scl[alpha >= 0.7] = 9  # cloud high probability
    scl[~valid] = 0  # no data
    return scl


def _cloud_probability(seed: int, grid: _Grid, when: dt.datetime, alpha: np.ndarray, haze: np.ndarray,
                       refl: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """s2cloudless-like probability x 255: noisy, with false positives on bright surfaces."""
    xs, ys = grid.box_axes()
    key = when.toordinal() * 24 + when.hour
    smooth = fractal_noise_grid(seed, stream_id("clp") + key, xs, ys, (100.0, 30.0))
    bright = np.clip((refl[..., contract.BAND_INDEX["B02"]] - 0.1) * 2.5, 0.0, 0.3)
    p = np.clip(0.95 * alpha + 0.4 * haze + bright + 0.05 * smooth + rng.normal(0, 0.02, alpha.shape), 0, 1)
    return np.round(p * 255).astype(np.uint8)


def _cloud_mask(clp: np.ndarray) -> np.ndarray:
    """s2cloudless-style mask: 4 px averaged probability > 0.4, dilated by 2 px."""
    averaged = ndimage.uniform_filter(clp.astype(np.float32) / 255.0, size=4)
    return ndimage.binary_dilation(averaged > 0.4, iterations=2).astype(np.uint8)


class BoxSimulator:
    """Simulates one box; each acquisition is independent, so they can run concurrently.

    ``bbox`` must be in a UTM CRS with sides that are whole multiples of 10 m (at least 40 m).
    """

    def __init__(self, bbox: BBox, seed: int, frames_min: int = 19, frames_max: int = 48):
        if not contract.is_utm_epsg(bbox.crs.epsg):
            raise ValueError(
                f"bbox CRS EPSG:{bbox.crs.epsg} is not UTM: give the box in a UTM zone, e.g. EPSG:32633"
            )
        width_m, height_m = bbox.max_x - bbox.min_x, bbox.max_y - bbox.min_y
        if min(width_m, height_m) < 40 or width_m % 10 or height_m % 10:
            raise ValueError(
                f"bbox sides {width_m} x {height_m} m must be multiples of 10 m and at least 40 m"
            )
        self.bbox, self.seed = bbox, seed
        self.grid = _Grid(bbox, int(width_m // 10), int(height_m // 10))
        self.dates = acquisition_dates(seed, bbox, frames_min, frames_max)
        self.polygons = generate_landscape(
            seed, (bbox.min_x, bbox.min_y, bbox.max_x, bbox.max_y), margin=SCENE_MARGIN_M + 10.0
        )
        LOGGER.debug("box %s: %d polygons, %d frames", bbox, len(self.polygons), len(self.dates))
        self.objects = _object_map(seed, self.grid, self.polygons)
        archetypes = np.concatenate(
            [[Archetype.ROAD.value, Archetype.PATH.value], self.polygons["archetype"]]
        )
        labels = np.concatenate([[0, 0], self.polygons["label"].to_numpy()])
        ids = np.concatenate([[-1, -2], self.polygons["id"].to_numpy()])
        doy = np.array([when.timetuple().tm_yday for when in self.dates], dtype=np.float64)
        self.fractions = endmember_fractions(ParcelParameters(seed, ids, archetypes, labels), doy)
        self.texture = _texture_multipliers(seed, self.grid)

    @property
    def box_shape(self) -> tuple[int, int]:
        return self.grid.height_px, self.grid.width_px

    def _key(self, t: int) -> int:
        when = self.dates[t]
        return when.toordinal() * 24 + when.hour

    def misregistration(self, t: int) -> tuple[float, float]:
        """Sub-pixel shift (x, y) in metres of acquisition t."""
        shift = MISREGISTRATION_M * (
            2 * hash_uniform(self.seed, stream_id("misreg"), self._key(t), np.arange(2)) - 1
        )
        return float(shift[0]), float(shift[1])

    def abundance(self, t: int, endmember: Endmember) -> np.ndarray:
        """The 2.5 m scene (with margin) of one end-member's cover at acquisition t, (H, W) float32."""
        channel = np.take(self.fractions[:, t, endmember], self.objects)
        if self.texture[endmember] is not None:
            channel *= self.texture[endmember]
        return channel

    def operators(self, t: int, res: int) -> tuple:
        """Row and column sensor operators of a native resolution at acquisition t."""
        shift_x, shift_y = self.misregistration(t)
        n_scene_y, n_scene_x = self.grid.scene_shape
        n_y, n_x = -(-self.grid.height_px * 10 // res), -(-self.grid.width_px * 10 // res)
        return (
            footprint_operator(n_y, res, n_scene_y, SCENE_MARGIN_M, shift_y, PSF_SIGMA_M[res]),
            footprint_operator(n_x, res, n_scene_x, SCENE_MARGIN_M, shift_x, PSF_SIGMA_M[res]),
        )

    def surface_reflectance(self, t: int) -> np.ndarray:
        """Clear-sky surface reflectance at 10 m (H, W, 12) of acquisition t, before atmosphere and noise."""
        operators = {res: self.operators(t, res) for res in BAND_GROUPS}
        abundances = {res: np.empty((len(Endmember), *self.box_shape), np.float32) for res in BAND_GROUPS}
        for e in Endmember:
            channel = self.abundance(t, e)
            for res, (my, mx) in operators.items():
                abundances[res][e] = nearest_to_10m(apply_separable(my, mx, channel), res, self.box_shape)
        surface = np.empty((*self.box_shape, len(contract.BAND_NAMES)), dtype=np.float32)
        for res, band_idx in BAND_GROUPS.items():
            mixed = ENDMEMBER_SPECTRA[:, band_idx].T @ abundances[res].reshape(len(Endmember), -1)
            surface[..., band_idx] = mixed.T.reshape(*self.box_shape, len(band_idx))
        return surface

    def acquire(self, t: int) -> dict[str, np.ndarray]:
        """Acquisition t as the contract's arrays (H, W, C): BANDS, CLP, CLM, SCL, IS_DATA."""
        seed, grid, when, key = self.seed, self.grid, self.dates[t], self._key(t)
        rng = np.random.default_rng([seed, stream_id("sensor"), key, *(round(c) for c in self.bbox)])
        surface = self.surface_reflectance(t)
        alpha, shadow, haze = _cloud_fields(seed, grid, when)
        gain = 1.0 + 0.02 * (2 * hash_uniform(seed, stream_id("gain"), key) - 1)
        cloud_brightness = 0.8 + 0.4 * hash_uniform(seed, stream_id("cloudb"), key)
        refl = np.empty_like(surface)
        for res, band_idx in BAND_GROUPS.items():
            # each band group sees the atmosphere and noise of its own native pixels
            a, s, h = (_at_native(field, res) for field in (alpha, shadow, haze))
            group = surface[..., band_idx] * np.float32(gain) * (1.0 - 0.75 * s)[..., None]
            group = group * (1.0 - 0.3 * h)[..., None] + h[..., None] * HAZE_SPECTRUM[band_idx]
            group = (1.0 - a[..., None]) * group + a[..., None] * (
                cloud_brightness * CLOUD_SPECTRUM[band_idx]
            )
            n_y, n_x = -(-self.grid.height_px * 10 // res), -(-self.grid.width_px * 10 // res)
            noise = rng.normal(0.0, 1.0, (n_y, n_x, len(band_idx))).astype(np.float32) * NOISE_SIGMA[band_idx]
            refl[..., band_idx] = group + nearest_to_10m(
                noise.transpose(2, 0, 1), res, self.box_shape
            ).transpose(1, 2, 0)
        valid = _no_data(seed, grid, when)

        dn = np.clip(np.round(refl / contract.NORM_FACTOR), 1, contract.MAX_DN).astype(np.uint16)
        dn[~valid] = 0
        observed = dn.astype(np.float32) * contract.NORM_FACTOR
        clp = _cloud_probability(seed, grid, when, alpha, haze, observed, rng)
        clp[~valid] = 0
        clm = _cloud_mask(clp)
        clm[~valid] = 0
        scl = _scene_classification(observed, alpha, shadow, haze, valid, rng)
        return {"BANDS": dn, "CLP": clp[..., None], "CLM": clm[..., None], "SCL": scl[..., None],
                "IS_DATA": valid[..., None]}  # fmt: skip

    def eopatch(self, threads: int = 1) -> EOPatch:
        """All acquisitions as an EOPatch in the challenge layout, parcels as ``vector_timeless/REFERENCE``."""
        t_count, shape = len(self.dates), self.box_shape
        arrays: dict[str, np.ndarray] = {
            "BANDS": np.zeros((t_count, *shape, len(contract.BAND_NAMES)), dtype=np.uint16),
            "CLP": np.zeros((t_count, *shape, 1), dtype=np.uint8),
            "CLM": np.zeros((t_count, *shape, 1), dtype=np.uint8),
            "SCL": np.zeros((t_count, *shape, 1), dtype=np.uint8),
            "IS_DATA": np.zeros((t_count, *shape, 1), dtype=bool),
        }

        def fill(t: int) -> None:
            for name, value in self.acquire(t).items():
                arrays[name][t] = value

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(fill, range(t_count)))

        eopatch = EOPatch(bbox=self.bbox, timestamps=self.dates)
        for feature in (contract.BANDS, contract.CLP, contract.CLM, contract.SCL, contract.IS_DATA):
            eopatch[feature] = arrays[feature[1]]
        eopatch[contract.NORM_FACTORS] = np.full((t_count, 1), contract.NORM_FACTOR, dtype=np.float32)
        inside = self.polygons[self.polygons.intersects(self.bbox.geometry)]
        eopatch[contract.REFERENCE] = inside[["id", "label", "geometry"]].reset_index(drop=True)
        eopatch.meta_info["source"] = "s2agri-simulator"
        eopatch.meta_info["simulator_seed"] = int(self.seed)
        return eopatch


def simulate_eopatch(
    bbox: BBox, seed: int, frames_min: int = 19, frames_max: int = 48, threads: int = 1
) -> EOPatch:
    """Simulate the challenge input features of one box plus its parcels as ``vector_timeless/REFERENCE``.

    ``threads`` run acquisitions concurrently; the result does not depend on it.
    """
    return BoxSimulator(bbox, seed, frames_min, frames_max).eopatch(threads=threads)


def box_bbox(
    index: int, size_px: int, origin: tuple[float, float] = (450000.0, 5080000.0), columns: int = 10
) -> BBox:
    """The bbox of simulated box ``index`` on a fixed 10-column grid of ``size_px`` x 10 m boxes (EPSG:32633)."""
    side = size_px * 10.0
    col, row = index % columns, index // columns
    min_x, min_y = origin[0] + col * side, origin[1] + row * side
    return BBox((min_x, min_y, min_x + side, min_y + side), crs=CRS(contract.CHALLENGE_CRS_EPSG))

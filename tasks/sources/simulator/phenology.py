"""Per-label phenology: the cover of each spectral end-member through the 2019 season.

Every polygon follows an archetype (winter cereal, maize-like summer crop, rapeseed, grassland
with mowing, ...) with its own random dates and vigour; the result is a table of end-member
fractions per polygon and acquisition, turned into reflectance by :mod:`.spectra`.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from .noise import hash_normal, hash_uniform, stream_id
from .spectra import Endmember

N_ENDMEMBERS = len(Endmember)


class Archetype(str, Enum):
    GRASS = "grass"
    WINTER_CEREAL = "winter_cereal"
    SUMMER_CROP = "summer_crop"
    RAPESEED = "rapeseed"
    SUMMER_CEREAL = "summer_cereal"
    ROOT_CROP = "root_crop"
    VEGETABLES = "vegetables"
    FALLOW = "fallow"
    VINEYARD = "vineyard"
    HOP = "hop"
    ORCHARD = "orchard"
    BUSHES = "bushes"
    FOREST_DECIDUOUS = "forest_deciduous"
    FOREST_CONIFEROUS = "forest_coniferous"
    BUILT_UP = "built_up"
    WATER = "water"
    WETLAND = "wetland"
    ROAD = "road"
    PATH = "path"


_GROUPS: dict[Archetype, tuple[int, ...]] = {
    Archetype.GRASS: (1, 5, 23, 24),
    Archetype.WINTER_CEREAL: (3, 4),
    Archetype.SUMMER_CROP: (2, 6, 11, 13, 14, 15, 16, 17, 18, 19, 20),
    Archetype.RAPESEED: (8,),
    Archetype.SUMMER_CEREAL: (9,),
    Archetype.ROOT_CROP: (10, 29),
    Archetype.VEGETABLES: (7, 22, 28),
    Archetype.FALLOW: (12, 1410, 1600, 5000, 6000),
    Archetype.VINEYARD: (21, 27),
    Archetype.HOP: (25,),
    Archetype.ORCHARD: (26, 30, 1420, 1800),
    Archetype.BUSHES: (1500,),
    Archetype.FOREST_DECIDUOUS: (2000,),
    Archetype.BUILT_UP: (3000,),
    Archetype.WATER: (7000,),
    Archetype.WETLAND: (4100, 4210, 4220),
}
ARCHETYPE_OF_LABEL: dict[int, Archetype] = {code: arch for arch, codes in _GROUPS.items() for code in codes}
#: "cultivated but not declared" parcels are ordinary arable crops.
ARCHETYPE_OF_LABEL[100] = Archetype.SUMMER_CROP

#: Emergence (summer crops) or senescence offsets per label, days.
_SUMMER_EMERGENCE = {
    2: 140,
    6: 150,
    11: 145,
    13: 120,
    14: 135,
    15: 170,
    16: 115,
    17: 128,
    18: 125,
    19: 112,
    20: 150,
}
_SUMMER_SENESCENCE = {
    2: 250,
    6: 225,
    11: 235,
    13: 200,
    14: 230,
    15: 225,
    16: 185,
    17: 212,
    18: 260,
    19: 270,
    20: 215,
}


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _after(d: np.ndarray, when: np.ndarray | float, width: float) -> np.ndarray:
    return _sig((d - when) / width)


class ParcelParameters:
    """Random phenology parameters of a set of polygons (one row each)."""

    def __init__(self, seed: int, ids: np.ndarray, archetypes: np.ndarray, labels: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        stream = stream_id("phenology")

        def uniform(k: int, low: float, high: float) -> np.ndarray:
            return low + (high - low) * hash_uniform(seed, stream, ids, k)

        self.archetype = np.asarray(archetypes, dtype=str)
        self.label = np.asarray(labels)
        self.shift = 6.0 * hash_normal(seed, stream, ids, 0)
        self.vigour = uniform(1, 0.84, 1.04)
        self.soil = uniform(2, 0.7, 1.3)
        self.stress = uniform(3, 0.0, 0.35)  #: share of the green cover in the low-chlorophyll end-member
        self.canopy = uniform(4, 0.25, 0.55)
        self.first_mow = uniform(5, 132.0, 160.0)
        self.mow_interval = uniform(6, 32.0, 50.0)
        self.n_mow = np.floor(uniform(7, 2.0, 5.0)).astype(int)
        self.mown = uniform(8, 0.0, 1.0) < 0.5  #: fallow mown once
        self.emergence = np.array([_SUMMER_EMERGENCE.get(int(c), 140) for c in self.label]) + self.shift
        self.senescence = np.array([_SUMMER_SENESCENCE.get(int(c), 245) for c in self.label]) + self.shift


def _stubble_then_tillage(d: np.ndarray, harvest: np.ndarray, p: ParcelParameters) -> tuple[np.ndarray, ...]:
    """Green, dry, flower after a harvest: straw stubble, then tillage, then volunteer regrowth."""
    tilled = _after(d, harvest + 25.0 + 10.0 * p.stress[:, None], 3.0)
    dry = 0.45 * _after(d, harvest, 1.5) * (1 - tilled)
    green = 0.12 * _after(d, harvest + 35.0, 6.0)
    return green, dry


def _mowing_factor(d: np.ndarray, p: ParcelParameters) -> tuple[np.ndarray, np.ndarray]:
    factor = np.ones_like(d)
    hay = np.zeros_like(d)
    for k in range(4):
        when = (p.first_mow + k * p.mow_interval)[:, None]
        active = (k < p.n_mow)[:, None] & (d >= when)
        since = np.where(active, d - when, 0.0)
        factor *= np.where(active, 1.0 - 0.7 * np.exp(-since / 16.0), 1.0)
        hay += np.where(active, 0.35 * np.exp(-since / 4.0), 0.0)
    return factor, hay


def endmember_fractions(params: ParcelParameters, doy: np.ndarray) -> np.ndarray:
    """End-member cover fractions, shape (n_polygons, n_dates, n_endmembers), float32."""
    d = np.broadcast_to(np.asarray(doy, dtype=np.float64)[None, :], (len(params.archetype), len(doy)))
    sh = params.shift[:, None]
    v = params.vigour[:, None]
    zero = np.zeros_like(d)
    green = np.zeros_like(d)
    dry = np.zeros_like(d)
    flower = np.zeros_like(d)
    extra = np.zeros((*d.shape, N_ENDMEMBERS))  # direct fractions (water, urban, forest shade)
    arch = params.archetype

    def put(which: Archetype, g: np.ndarray, dr: np.ndarray, fl: np.ndarray = zero) -> None:
        sel = arch == which.value
        green[sel], dry[sel], flower[sel] = g[sel], dr[sel], fl[sel]

    mow, hay = _mowing_factor(d, params)
    grass_green = v * (0.55 + 0.35 * _after(d, 105.0 + sh, 10.0)) * mow
    grass_dry = hay + 0.12 * _after(d, 205.0, 10.0)
    put(Archetype.GRASS, grass_green, grass_dry)

    harvest = 190.0 + sh
    g = v * (0.35 + 0.6 * _after(d, 100.0 + sh, 8.0)) * (1 - _after(d, 166.0 + sh, 6.0))
    sg, sd = _stubble_then_tillage(d, harvest, params)
    before = 1 - _after(d, harvest, 1.5)
    put(Archetype.WINTER_CEREAL, g * before + sg, v * 0.85 * _after(d, 166.0 + sh, 6.0) * before + sd)

    em, se = params.emergence[:, None], params.senescence[:, None]
    residue = 0.15 * (1 - _after(d, 105.0 + sh, 3.0))
    put(Archetype.SUMMER_CROP, v * 0.95 * _after(d, em + 25.0, 9.0) * (1 - _after(d, se, 8.0)),
        residue + v * 0.8 * _after(d, se, 8.0) * _after(d, em + 25.0, 9.0))  # fmt: skip

    harvest = 183.0 + sh
    before = 1 - _after(d, harvest, 1.5)
    bloom = 0.55 * v * np.exp(-(((d - 118.0 - sh) / 9.0) ** 2))
    g = v * (0.55 + 0.35 * _after(d, 95.0 + sh, 7.0)) * (1 - _after(d, 158.0 + sh, 6.0)) - 0.6 * bloom
    sg, sd = _stubble_then_tillage(d, harvest, params)
    put(Archetype.RAPESEED, np.clip(g, 0, None) * before + sg,
        v * 0.85 * _after(d, 158.0 + sh, 6.0) * before + sd, bloom * before)  # fmt: skip

    harvest = 210.0 + sh
    before = 1 - _after(d, harvest, 1.5)
    sg, sd = _stubble_then_tillage(d, harvest, params)
    put(Archetype.SUMMER_CEREAL, v * 0.9 * _after(d, 120.0 + sh, 7.0) * (1 - _after(d, 186.0 + sh, 6.0)) * before + sg,
        v * 0.85 * _after(d, 186.0 + sh, 6.0) * before + sd)  # fmt: skip

    harvest = 228.0 + sh
    before = 1 - _after(d, harvest, 1.5)
    put(Archetype.ROOT_CROP, v * 0.88 * _after(d, 142.0 + sh, 7.0) * (1 - _after(d, 200.0 + sh, 7.0)) * before,
        v * 0.6 * _after(d, 200.0 + sh, 7.0) * before)  # fmt: skip

    cycle1 = _after(d, 112.0 + sh, 5.0) * (1 - _after(d, 168.0 + sh, 2.0))
    cycle2 = _after(d, 198.0 + sh, 5.0)
    put(Archetype.VEGETABLES, v * 0.8 * (cycle1 + cycle2), 0.1 * (1 - cycle1 - cycle2).clip(0))

    fallow_mow = np.where(params.mown[:, None] & (d >= 190.0 + sh), 0.5, 1.0)
    put(Archetype.FALLOW, v * (0.3 + 0.25 * _after(d, 120.0 + sh, 12.0)) * fallow_mow,
        0.25 + 0.2 * _after(d, 190.0, 10.0))  # fmt: skip

    c = params.canopy[:, None]
    inter_row = 0.6 * grass_green
    leaf = _after(d, 125.0 + sh, 7.0)
    put(
        Archetype.VINEYARD,
        c * v * leaf + (1 - c) * inter_row,
        c * 0.35 * (1 - leaf) + (1 - c) * 0.6 * grass_dry,
    )
    hop = 0.85 * v * _after(d, 150.0 + sh, 12.0) * (1 - _after(d, 236.0 + sh, 2.0))
    put(Archetype.HOP, hop + 0.1, 0.1 * _after(d, 236.0 + sh, 2.0))
    leaf = _after(d, 110.0 + sh, 6.0)
    evergreen = np.isin(params.label, (26,))[:, None]
    leaf = np.where(evergreen, 1.0, leaf)
    orchard_c = c + 0.1
    put(Archetype.ORCHARD, orchard_c * 0.9 * v * leaf + (1 - orchard_c) * grass_green,
        orchard_c * 0.3 * (1 - leaf) + (1 - orchard_c) * grass_dry)  # fmt: skip
    leaf = _after(d, 112.0 + sh, 6.0)
    put(Archetype.BUSHES, 0.8 * (0.15 + 0.75 * leaf), 0.8 * 0.5 * (1 - leaf))

    # Forests, water, built-up and roads: fixed fractions that do not sum to one (canopy shade).
    stress = params.stress[:, None]
    sel = arch == Archetype.FOREST_DECIDUOUS.value
    leaf = _after(d, 112.0 + sh, 6.0)
    extra[sel, :, Endmember.VEG] = (0.75 * (0.12 + 0.8 * leaf) * 0.6)[sel]
    extra[sel, :, Endmember.VEG_DARK] = (0.75 * (0.12 + 0.8 * leaf) * 0.4)[sel]
    extra[sel, :, Endmember.DRY] = (0.75 * 0.6 * (1 - leaf))[sel]
    sel = arch == Archetype.FOREST_CONIFEROUS.value
    extra[sel, :, Endmember.VEG] = 0.12
    extra[sel, :, Endmember.VEG_DARK] = 0.5 + 0.05 * stress[sel]
    extra[sel, :, Endmember.DRY] = 0.05
    sel = arch == Archetype.BUILT_UP.value
    gardens = 0.25 * (0.5 + 0.5 * _after(d, 110.0, 10.0))
    extra[sel, :, Endmember.URBAN] = 0.62
    extra[sel, :, Endmember.VEG] = gardens[sel]
    extra[sel, :, Endmember.SOIL] = 0.08
    sel = arch == Archetype.WATER.value
    extra[sel, :, Endmember.WATER] = 0.95
    extra[sel, :, Endmember.SOIL] = 0.04
    extra[sel, :, Endmember.VEG] = (0.01 + 0.03 * _after(d, 200.0, 10.0))[sel]
    sel = arch == Archetype.WETLAND.value
    extra[sel, :, Endmember.VEG] = (v * (0.3 + 0.4 * _after(d, 120.0 + sh, 10.0)))[sel]
    extra[sel, :, Endmember.WATER] = 0.3
    extra[sel, :, Endmember.DRY] = 0.2
    sel = arch == Archetype.ROAD.value
    extra[sel, :, Endmember.URBAN] = 0.85
    extra[sel, :, Endmember.SOIL] = 0.1
    sel = arch == Archetype.PATH.value
    put(Archetype.PATH, 0.45 * grass_green, 0.1 + 0.2 * _after(d, 200.0, 10.0))

    fractions = extra
    vegetated = ~np.isin(
        arch,
        [a.value for a in (Archetype.FOREST_DECIDUOUS, Archetype.FOREST_CONIFEROUS, Archetype.BUILT_UP,
                           Archetype.WATER, Archetype.WETLAND, Archetype.ROAD)],
    )  # fmt: skip
    green, dry, flower = (np.clip(a, 0.0, 1.0) for a in (green, dry, flower))
    total = green + dry + flower
    over = np.maximum(total, 1.0)
    green, dry, flower = green / over, dry / over, flower / over
    soil = np.clip(1.0 - green - dry - flower, 0.0, 1.0) * params.soil[:, None]
    fractions[vegetated, :, Endmember.VEG] = (green * (1 - stress))[vegetated]
    fractions[vegetated, :, Endmember.VEG_DARK] = (green * stress)[vegetated]
    fractions[vegetated, :, Endmember.DRY] = dry[vegetated]
    fractions[vegetated, :, Endmember.FLOWER] = flower[vegetated]
    fractions[vegetated, :, Endmember.SOIL] = soil[vegetated]
    return fractions.astype(np.float32)

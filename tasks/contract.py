"""The AI4EO "Enhanced Sentinel-2 Agriculture" data contract, in code.

Feature names, band order, dtypes, shapes and label codes of the challenge EOPatches
(``../shared/spec/challenge-data.md``). Everything in s2agri reads and writes these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from eolearn.core import FeatureType

#: Sentinel-2 L2A bands of ``data/BANDS``, in order (B10 is not in L2A).
BAND_NAMES: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)  # fmt: skip
#: Native ground sampling distance (m) of each band.
BAND_RESOLUTION_M: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20,
    "B07": 20, "B08": 10, "B8A": 20, "B09": 60, "B11": 20, "B12": 20,
}  # fmt: skip
BAND_INDEX: dict[str, int] = {name: i for i, name in enumerate(BAND_NAMES)}

INPUT_RESOLUTION_M = 10.0
TARGET_RESOLUTION_M = 2.5
SCALE = 4  #: reference pixels per input pixel along each axis
CHALLENGE_INPUT_SIZE = 500  #: a full challenge box is 500 x 500 px at 10 m
CHALLENGE_CRS_EPSG = 32633
NORM_FACTOR = 1e-4  #: reflectance = DN * NORM_FACTOR
MAX_DN = 10000
TIME_INTERVAL = ("2019-03-01", "2019-09-01")
MIN_FRAMES, MAX_FRAMES = 19, 48

# Feature names, as (FeatureType, name) the way eo-learn tasks expect them.
BANDS = (FeatureType.DATA, "BANDS")
CLP = (FeatureType.DATA, "CLP")
CLM = (FeatureType.MASK, "CLM")
IS_DATA = (FeatureType.MASK, "IS_DATA")
SCL = (FeatureType.MASK, "SCL")
NORM_FACTORS = (FeatureType.SCALAR, "NORM_FACTORS")
CULTIVATED = (FeatureType.MASK_TIMELESS, "CULTIVATED")
NOT_DECLARED = (FeatureType.MASK_TIMELESS, "NOT_DECLARED")
ALL_POLYS = (FeatureType.MASK_TIMELESS, "ALL_POLYS")
REFERENCE = (FeatureType.VECTOR_TIMELESS, "REFERENCE")

# Label codes of the reference polygons (challenge-data.md, "Labels -> reference masks").
LABEL_NAMES: dict[int, str] = {
    1: "grass/meadow", 2: "maize/sorghum", 3: "winter cereals", 4: "winter barley",
    5: "clover, alfalfa", 6: "pumpkin", 7: "vegetables", 8: "winter rapeseed",
    9: "summer cereals", 10: "potato", 11: "soybean", 12: "fallow",
    13: "flax/honey plants", 14: "hemp", 15: "buckwheat", 16: "poppy/lupin/vetch",
    17: "sunflower", 18: "fodder roots", 19: "sugar beet", 20: "millet/summer rapeseed",
    21: "permanent plants <0.1 ha, coppice", 22: "nurseries/ornamentals", 23: "fodder legumes",
    24: "crimson clover", 25: "hop", 26: "olive", 27: "vineyard", 28: "stock nursery",
    29: "strawberry", 30: "orchards and other trees", 100: "cultivated but not declared",
    1410: "farmland being overgrown", 1420: "tree plantation", 1500: "trees and bushes",
    1600: "uncultivated farmland", 1800: "farmland covered with trees", 2000: "forest",
    3000: "built-up", 4100: "bog", 4210: "reeds", 4220: "other swamp",
    5000: "dry open land with plant cover", 6000: "open land with little or no plant cover",
    7000: "water",
}  # fmt: skip
NOT_CULTIVATED_CODES: frozenset[int] = frozenset(
    {1, 5, 12, 24, 26, 27, 29, 30, 1410, 1420, 1500, 1600, 1800, 2000, 3000, 4100, 4210, 4220,
     5000, 6000, 7000}
)  # fmt: skip
CULTIVATED_CODES: frozenset[int] = frozenset({2, 3, 4, 6, 7, 8, 9, 10, 11, *range(13, 24), 25, 28})
NOT_DECLARED_CODES: frozenset[int] = frozenset({100})

# Rasterisation of the reference polygons, exactly as the challenge did it.
REFERENCE_BUFFER_M = -2.5
REFERENCE_ALL_TOUCHED = False


def label_class(code: int) -> Literal["cultivated", "not_cultivated", "not_declared"]:
    """The reference class of one label code; a ``ValueError`` names an unknown code."""
    if code in CULTIVATED_CODES:
        return "cultivated"
    if code in NOT_CULTIVATED_CODES:
        return "not_cultivated"
    if code in NOT_DECLARED_CODES:
        return "not_declared"
    raise ValueError(
        f"unknown label code {code}: use one of the challenge codes in s2agri.tasks.contract.LABEL_NAMES"
    )


def is_utm_epsg(epsg: int) -> bool:
    """True for WGS84 / UTM zones north (326xx) and south (327xx)."""
    return 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760


ShapeKind = Literal["temporal", "timeless_input", "timeless_reference", "scalar"]


@dataclass(frozen=True)
class FeatureSpec:
    """What the contract demands of one EOPatch feature."""

    feature: tuple[FeatureType, str]
    dtype: np.dtype
    channels: int
    kind: ShapeKind
    required: bool = True  #: required in every box (reference features only in training boxes)

    @property
    def path(self) -> str:
        return f"{self.feature[0].value}/{self.feature[1]}"


INPUT_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(BANDS, np.dtype(np.uint16), len(BAND_NAMES), "temporal"),
    FeatureSpec(CLP, np.dtype(np.uint8), 1, "temporal"),
    FeatureSpec(CLM, np.dtype(np.uint8), 1, "temporal"),
    FeatureSpec(IS_DATA, np.dtype(bool), 1, "temporal"),
    FeatureSpec(SCL, np.dtype(np.uint8), 1, "temporal"),
    FeatureSpec(NORM_FACTORS, np.dtype(np.float32), 1, "scalar"),
)
REFERENCE_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(CULTIVATED, np.dtype(bool), 1, "timeless_reference", required=False),
    FeatureSpec(NOT_DECLARED, np.dtype(bool), 1, "timeless_reference", required=False),
    FeatureSpec(ALL_POLYS, np.dtype(np.uint16), 1, "timeless_reference", required=False),
)
CONTRACT: tuple[FeatureSpec, ...] = INPUT_FEATURES + REFERENCE_FEATURES

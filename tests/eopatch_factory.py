"""Small EOPatches that follow the data contract, for tests."""

from __future__ import annotations

import datetime as dt

import numpy as np
from eolearn.core import EOPatch
from sentinelhub import CRS, BBox

from s2agri.tasks import contract

#: Small test boxes: 20 x 20 px at 10 m (200 m), 3 frames, reference 80 x 80 px at 2.5 m.
SMALL_SIZE, SMALL_FRAMES = 20, 3


def contract_array(spec: contract.FeatureSpec, frames: int, size: int) -> np.ndarray:
    """A zero array of the contract dtype and shape for one feature."""
    if spec.kind == "scalar":
        return np.full((frames, spec.channels), contract.NORM_FACTOR, dtype=spec.dtype)
    if spec.kind == "timeless_reference":
        return np.zeros((contract.SCALE * size, contract.SCALE * size, spec.channels), dtype=spec.dtype)
    if spec.kind == "timeless_input":
        return np.zeros((size, size, spec.channels), dtype=spec.dtype)
    return np.zeros((frames, size, size, spec.channels), dtype=spec.dtype)


def build_eopatch(
    *,
    frames: int = SMALL_FRAMES,
    size: int = SMALL_SIZE,
    epsg: int = contract.CHALLENGE_CRS_EPSG,
    reference: bool = True,
) -> EOPatch:
    """A valid EOPatch with every contract feature (reference masks when ``reference``)."""
    origin = (500000.0, 5100000.0)
    extent = size * contract.INPUT_RESOLUTION_M
    bbox = BBox((*origin, origin[0] + extent, origin[1] + extent), CRS(epsg))
    start = dt.datetime(2019, 3, 1)
    patch = EOPatch(bbox=bbox, timestamps=[start + dt.timedelta(days=5 * i) for i in range(frames)])
    for spec in contract.CONTRACT:
        if spec.required or reference:
            patch[spec.feature] = contract_array(spec, frames, size)
    return patch

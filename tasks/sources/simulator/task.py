"""The simulator as an eo-learn input task, the embedded default data source of s2agri."""

from __future__ import annotations

from eolearn.core import EOPatch, EOTask
from sentinelhub import BBox

from ... import contract
from .scene import BoxSimulator


class SimulatorInputTask(EOTask):
    """Create an EOPatch for ``bbox`` from the Sentinel-2 scene simulator (no account, no network).

    Used like eo-learn's ``SentinelHubInputTask``: ``execute(bbox=...)`` returns a new EOPatch with
    BANDS, CLP, CLM, SCL, IS_DATA, NORM_FACTORS and the parcels as ``vector_timeless/REFERENCE``.
    The same ``seed`` and ``bbox`` always give the same patch, and neighbouring boxes agree at edges.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        frames_min: int = contract.MIN_FRAMES,
        frames_max: int = contract.MAX_FRAMES,
        threads: int = 1,
    ):
        if not 1 <= frames_min <= frames_max:
            raise ValueError(f"frames_min={frames_min} and frames_max={frames_max}: need 1 <= min <= max")
        self.seed = seed
        self.frames_min = frames_min
        self.frames_max = frames_max
        self.threads = threads

    def execute(self, eopatch: EOPatch | None = None, *, bbox: BBox | None = None) -> EOPatch:
        bbox = bbox if bbox is not None else (eopatch.bbox if eopatch is not None else None)
        if bbox is None:
            raise ValueError("no bbox: pass bbox=... to execute or an EOPatch that has one")
        simulated = BoxSimulator(bbox, self.seed, self.frames_min, self.frames_max).eopatch(
            threads=self.threads
        )
        if eopatch is None:
            return simulated
        for feature in simulated.get_features():
            eopatch[feature] = simulated[feature]
        eopatch.timestamps = simulated.timestamps
        eopatch.meta_info.update(simulated.meta_info)
        return eopatch

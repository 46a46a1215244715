"""``s2agri export``: predicted parcels and rasters of EOPatches to GIS files.

The vector format follows the file extension (:mod:`s2agri.tasks.vector_export`); rasters are the
submission GeoTIFFs and probability COGs of the prediction tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import pandas as pd
from eolearn.core import EOPatch, EOTask, FeatureType

from s2agri.tasks.export import ProbabilityCogTask, SubmissionTiffTask
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_PROBA
from s2agri.tasks.vectorise import PARCELS_PRED

LOGGER = logging.getLogger(__name__)


def merged_parcels(boxes: Sequence[Path]) -> gpd.GeoDataFrame:
    """PARCELS_PRED of ``boxes`` in one GeoDataFrame, in the CRS of the first box."""
    frames = [EOPatch.load(str(box), features=[PARCELS_PRED])[PARCELS_PRED] for box in boxes]
    crs = frames[0].crs
    frames = [frame if frame.crs.equals(crs) else frame.to_crs(crs) for frame in frames]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)


def export_rasters(boxes: Sequence[Path], submission: Path | None, proba: Path | None) -> None:
    """Submission GeoTIFFs and/or probability COGs of ``boxes`` (named after the box folders)."""
    tasks: list[EOTask] = []
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

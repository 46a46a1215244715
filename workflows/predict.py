"""``s2agri predict``: the per-box prediction EOWorkflow over a folder of boxes, as one run folder.

A run folder holds::

    eopatches/<box>/       PRED_PROBA, PRED_CULTIVATED, PARCELS_PRED (+ reference masks), meta_info
    submission/<box>.tif   challenge submission, uint8 0/1 at 2.5 m
    proba/<box>_proba.tif  probability Cloud-Optimised GeoTIFF
    parcels.gpkg           the parcels of every box (layer ``parcels``)
    parcel_stats.gpkg      parcel models only: per known parcel its monthly band statistics
                           (:func:`s2agri.tasks.zonal.zonal_attributes`), ``proba`` and ``pred``
                           (layer ``parcel_stats``)
    config.json            the resolved config; model_card.json the model's card
    run.json               boxes, seconds per box, failures, model; failed.json when a box failed
    report/                eo-learn's execution logs and HTML report
    stac/collection.json   STAC collection: one item per box (footprint, dates, COG, submission, EOPatch),
                           the shared files as collection assets (:mod:`s2agri.workflows.stac_outputs`)

A box that fails leaves no file behind; the others are kept and the failures listed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
from eolearn.core import EOPatch, FeatureType

from s2agri.tasks import contract
from s2agri.tasks.vectorise import PARCELS_PRED, empty_parcels, export_parcels
from s2agri.tasks.zonal import PARCEL_STATS, parcel_dates, zonal_attributes
from s2agri.workflows.config import MappingConfig, dump_config
from s2agri.workflows.mapping import PredictionWorkflow
from s2agri.workflows.model_store import TrainedModel, with_model_inputs
from s2agri.workflows.runs import (
    EOPATCHES,
    REPORT,
    ExecutionSummary,
    execute,
    preflight,
    relative_folders,
    write_json,
)
from s2agri.workflows.stac_outputs import predict_run_collection

LOGGER = logging.getLogger(__name__)

PARCELS_FILE, PARCELS_LAYER = "parcels.gpkg", "parcels"
PARCEL_STATS_FILE, PARCEL_STATS_LAYER = "parcel_stats.gpkg", "parcel_stats"
EXIT_SOME_FAILED = 1


def collect_parcels(eopatch_folders: Sequence[Path], crs: str = "EPSG:32633") -> list[gpd.GeoDataFrame]:
    """PARCELS_PRED of every EOPatch (reprojected to the first box's CRS if they differ); an empty
    layer in ``crs`` when there is no box."""
    frames = [EOPatch.load(str(folder), features=[PARCELS_PRED])[PARCELS_PRED] for folder in eopatch_folders]
    if not frames:
        return [empty_parcels(crs)]
    crs = frames[0].crs
    if any(not frame.crs.equals(crs) for frame in frames):
        LOGGER.warning("boxes are in several CRSs: parcels reprojected to %s", crs)
        frames = [frame.to_crs(crs) for frame in frames]
    return frames


def collect_parcel_stats(
    eopatch_folders: Sequence[Path], months: Sequence[int], threshold: float
) -> list[gpd.GeoDataFrame]:
    """Per box the :func:`zonal_attributes` of its saved PARCEL_STATS plus ``box``, ``proba`` and
    ``pred`` (``proba >= threshold``; 0 where a parcel got no prediction), in the first box's CRS."""
    frames = []
    for folder in eopatch_folders:
        patch = EOPatch.load(str(folder), features=[PARCEL_STATS, FeatureType.META_INFO])
        table = patch[PARCEL_STATS]
        attributes = zonal_attributes(table, parcel_dates(patch), months)
        proba = table["proba"].to_numpy(dtype=np.float64)
        attributes.insert(0, "box", folder.name)
        attributes["proba"] = proba
        attributes["pred"] = (np.nan_to_num(proba, nan=0.0) >= threshold).astype(np.int64)
        frames.append(attributes)
    if frames and any(not frame.crs.equals(frames[0].crs) for frame in frames):
        LOGGER.warning("boxes are in several CRSs: parcel statistics reprojected to %s", frames[0].crs)
        frames = [frame.to_crs(frames[0].crs) for frame in frames]
    return frames


def check_parcel_boxes(boxes: Sequence[Path], model: str) -> None:
    """One-line input error naming the boxes without REFERENCE parcels (a parcel model classifies them)."""
    preflight(
        boxes,
        [contract.REFERENCE],
        f"{model} classifies known parcels, so every box needs its parcel polygons "
        "(add them, or predict with a pixel or deep model)",
    )


def predict_boxes(
    boxes: Sequence[Path], trained: TrainedModel, config: MappingConfig, run: Path, workers: int = 1
) -> ExecutionSummary:
    """Run the prediction workflow of every box into the (existing, empty) folder ``run``."""
    config = with_model_inputs(trained, config)
    root, folders = relative_folders(boxes)
    for sub in ("submission", "proba", EOPATCHES):
        (run / sub).mkdir(parents=True, exist_ok=True)
    workflow = PredictionWorkflow(trained, config, root, run)
    start = time.perf_counter()
    summary = execute(
        workflow.workflow,
        workflow.execution_kwargs(folders, boxes),
        [box.name for box in boxes],
        run / REPORT,
        workers,
    )
    if summary.report is not None:
        summary.report = summary.report.relative_to(run.resolve())
    for name in summary.failures:
        for path in workflow.outputs_of(name):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    parcels = collect_parcels([run / EOPATCHES / name for name in summary.succeeded])
    export_parcels(parcels, run / PARCELS_FILE, layer=PARCELS_LAYER)
    if trained.is_parcel and summary.succeeded:
        stats = collect_parcel_stats(
            [run / EOPATCHES / name for name in summary.succeeded],
            (trained.parcel or {})["months"],
            config.predict.cutoff,
        )
        export_parcels(stats, run / PARCEL_STATS_FILE, layer=PARCEL_STATS_LAYER)
    dump_config(config, run / "config.json")
    write_json(run / "model_card.json", trained.card)
    write_json(
        run / "run.json",
        {
            "model": trained.name,
            "inputs": {box.name: str(box) for box in boxes},
            "inputs_relative": {box.name: os.path.relpath(box, run.resolve()) for box in boxes},
            "workers": workers,
            "total_seconds": round(time.perf_counter() - start, 2),
            **summary.to_json(),
        },
    )
    if summary.failures:
        write_json(run / "failed.json", summary.failures)
    predict_run_collection(run, summary.succeeded, trained.name, {box.name: box for box in boxes})
    return summary

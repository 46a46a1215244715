"""``s2agri simulate``: write a simulated region in the challenge layout, atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import geopandas as gpd
import pandas as pd
from eolearn.core import (
    EOPatch,
    EOWorkflow,
    OverwritePermission,
    SaveTask,
    linearly_connect_tasks,
)

from s2agri.tasks import contract
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.tasks.sources.simulator import SimulatorInputTask, box_bbox
from s2agri.workflows.runs import EOPATCHES, execute, staged_folder

LOGGER = logging.getLogger(__name__)
MAX_BOXES = 10_000
MIN_SIZE, MAX_SIZE = 4, 2000
PARCELS_LAYER = "parcels"


def box_name(index: int) -> str:
    """Folder name of simulated box ``index``."""
    return f"box-{index:03d}"


def simulation_workflow(
    seed: int, frames_min: int, frames_max: int, eopatches: Path, threads: int
) -> EOWorkflow:
    """simulate -> rasterise reference -> save, as an eo-learn EOWorkflow (one execution per box)."""
    tasks = [
        SimulatorInputTask(seed, frames_min=frames_min, frames_max=frames_max, threads=threads),
        RasteriseReferenceTask(),
        SaveTask(str(eopatches), overwrite_permission=OverwritePermission.OVERWRITE_FEATURES),
    ]
    return EOWorkflow(linearly_connect_tasks(*tasks))


def _merged_parcels(eopatches: Path, names: list[str]) -> gpd.GeoDataFrame:
    frames = [
        EOPatch.load(str(eopatches / name), features=[contract.REFERENCE])[contract.REFERENCE]
        for name in names
    ]
    merged = pd.concat(frames, ignore_index=True).drop_duplicates("id").sort_values("id")
    return gpd.GeoDataFrame(merged, geometry="geometry", crs=frames[0].crs).reset_index(drop=True)


def simulate_region(
    out: Path, boxes: int, size: int, seed: int, frames_min: int, frames_max: int, workers: int = 1
) -> gpd.GeoDataFrame:
    """Simulate ``boxes`` boxes into ``out`` (replaced if it exists); returns all parcels.

    Everything is written to a temporary sibling folder and renamed into place at the end, so
    ``out`` is never seen half-written.
    """
    with staged_folder(out) as staging:
        eopatches = staging / EOPATCHES
        names = [box_name(i) for i in range(boxes)]
        threads = max(1, (os.cpu_count() or 1) // workers)
        workflow = simulation_workflow(seed, frames_min, frames_max, eopatches, threads)
        input_node, save_node = workflow.get_nodes()[0], workflow.get_nodes()[-1]
        execution_kwargs = [
            {input_node: {"bbox": box_bbox(i, size)}, save_node: {"eopatch_folder": name}}
            for i, name in enumerate(names)
        ]
        summary = execute(workflow, execution_kwargs, names, staging / "logs", workers, report=False)
        if summary.failures:
            raise RuntimeError(f"simulation failed: {summary.failure_line()}")
        parcels = _merged_parcels(eopatches, names)
        parcels.to_file(staging / "parcels.gpkg", layer=PARCELS_LAYER, driver="GPKG")
    return parcels

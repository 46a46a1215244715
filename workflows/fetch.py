"""``s2agri fetch``: one box of Sentinel-2 L2A data (and parcels) into an EOPatch in the data contract.

The box goes through an eo-learn EOWorkflow: source -> [time filter] -> [parcels -> reference
masks] -> save. It is saved into a hidden sibling of OUT, checked with ``s2agri validate``'s
rules, and only then renamed to OUT: a refused request, an empty search or a broken response
leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from eolearn.core import EOPatch, EOTask, EOWorkflow, OverwritePermission, SaveTask, linearly_connect_tasks
from sentinelhub import BBox

from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.workflows.runs import staged_folder
from s2agri.workflows.sources import (
    ParcelsConfig,
    SentinelHubSource,
    SimulatorSource,
    StacSource,
    input_task,
    parcels_task,
    time_filter_task,
)
from s2agri.workflows.validate import validate_eopatch

LOGGER = logging.getLogger(__name__)


def box_tasks(
    source: SimulatorSource | SentinelHubSource | StacSource, parcels: ParcelsConfig | None
) -> list[EOTask]:
    """The chain that makes one box: input, optional time filter, parcels and their masks.

    Reference masks are rasterised when there are parcels: from ``parcels``, or the simulator's own.
    """
    tasks: list[EOTask] = [input_task(source)]
    time_filter = time_filter_task(source)
    if time_filter is not None:
        tasks.append(time_filter)
    if parcels is not None:
        tasks.append(parcels_task(parcels))
    if parcels is not None or isinstance(source, SimulatorSource):
        tasks.append(RasteriseReferenceTask())
    return tasks


def parse_time(text: str | None) -> tuple[dt.date, dt.date] | None:
    """``START/END`` (ISO dates) -> dates; an input error naming the expected form."""
    if text is None:
        return None
    start, sep, end = text.partition("/")
    try:
        if not sep:
            raise ValueError
        interval = dt.date.fromisoformat(start.strip()), dt.date.fromisoformat(end.strip())
    except ValueError:
        raise S2AgriInputError(
            f"--time {text!r} is not START/END: give ISO dates, e.g. 2019-03-01/2019-09-01"
        ) from None
    if interval[1] <= interval[0]:
        raise S2AgriInputError(f"--time {text} ends before it starts: give START/END with START < END")
    return interval


def fetch_box(
    bbox: BBox,
    source: SimulatorSource | SentinelHubSource | StacSource,
    out: Path,
    parcels: ParcelsConfig | None = None,
) -> EOPatch:
    """Fetch one box into the EOPatch folder ``out`` (replaced atomically); returns the EOPatch."""
    tasks = box_tasks(source, parcels)
    with staged_folder(out) as staging:
        save = SaveTask(str(staging.parent), overwrite_permission=OverwritePermission.OVERWRITE_FEATURES)
        workflow = EOWorkflow(linearly_connect_tasks(*tasks, save))
        nodes = workflow.get_nodes()
        workflow.execute(
            {nodes[0]: {"bbox": bbox}, nodes[-1]: {"eopatch_folder": staging.name}}, raise_errors=True
        )
        violations = validate_eopatch(staging)
        if violations:
            first = violations[0]
            raise S2AgriInputError(
                f"the fetched box breaks the data contract ({len(violations)} problem(s), first: {first}): "
                "nothing was written; report it with the source and bbox"
            )
    return EOPatch.load(str(out), lazy_loading=True)

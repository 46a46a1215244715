"""``s2agri fetch``: one box of Sentinel-2 L2A data (and parcels) into an EOPatch in the data contract.

The box goes through an eo-learn EOWorkflow: source -> [time filter] -> [parcels -> reference
masks] -> save. It is saved into a hidden sibling of OUT, checked with ``s2agri validate``'s
rules, and only then renamed to OUT: a refused request, an empty search or a broken response
leaves nothing behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from eolearn.core import EOPatch, EOTask, EOWorkflow, OverwritePermission, SaveTask, linearly_connect_tasks
from pydantic import ValidationError
from sentinelhub import BBox

from s2agri.aoi.bbox import box_from_arguments
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.workflows.config import validation_problems
from s2agri.workflows.runs import check_out, staged_folder
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


def _source_from_args(args: argparse.Namespace) -> SimulatorSource | SentinelHubSource | StacSource:
    interval = parse_time(args.time)
    values: dict[str, Any] = {"kind": args.source}
    if args.source == "simulator":
        values |= {"seed": args.seed, "frames_min": args.frames_min, "frames_max": args.frames_max}
        if interval is not None:
            values["time_interval"] = interval
        if args.resolution != contract.INPUT_RESOLUTION_M:
            raise S2AgriInputError(
                f"--resolution {args.resolution:g}: the simulator makes 10 m data only: leave --resolution out"
            )
    else:
        values |= {"maxcc": args.maxcc, "resolution": args.resolution}
        if interval is not None:
            values["time_interval"] = interval
    if args.source == "stac":
        values |= {"catalog": args.catalog, "collection": args.collection}
    model = {"simulator": SimulatorSource, "sentinelhub": SentinelHubSource, "stac": StacSource}[args.source]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise S2AgriInputError(
            f"invalid --source {args.source} options: {validation_problems(exc, 'source')}"
        ) from None


def _parcels_from_args(args: argparse.Namespace) -> ParcelsConfig | None:
    if args.parcels is None:
        return None
    try:
        return ParcelsConfig(
            uri=args.parcels,
            layer=args.parcels_layer,
            id_column=args.id_column,
            label_column=args.label_column,
            clip=args.clip,
        )
    except ValidationError as exc:
        raise S2AgriInputError(f"--parcels: {exc.errors()[0]['msg']}") from None


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


def fetch_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri fetch``."""
    source = _source_from_args(args)
    parcels = _parcels_from_args(args)
    resolution = getattr(source, "resolution", contract.INPUT_RESOLUTION_M)
    bbox = box_from_arguments(args.bbox, args.crs, resolution=resolution)
    out = check_out(args.out, args.overwrite)
    LOGGER.info("fetching %s from %s into %s", bbox, source.kind, out)
    eopatch = fetch_box(bbox, source, out.resolve(), parcels)
    height, width = eopatch[contract.BANDS].shape[1:3]
    reference = contract.REFERENCE in eopatch
    n_parcels = len(eopatch[contract.REFERENCE]) if reference else 0
    print(
        f"wrote {out}: {len(eopatch.timestamps)} acquisitions of {width} x {height} px at {resolution:g} m "
        f"in EPSG:{bbox.crs.epsg} from {source.kind}"
        + (f", {n_parcels} parcels with reference masks" if reference else ", no parcels")
    )
    return 0

"""The ``s2agri fetch`` command: arguments in, a workflow of :mod:`s2agri.workflows.fetch` called, results printed."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from s2agri.aoi.bbox import box_from_arguments
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows.config import validation_problems
from s2agri.workflows.fetch import LOGGER, fetch_box, parse_time
from s2agri.workflows.runs import check_out
from s2agri.workflows.sources import ParcelsConfig, SentinelHubSource, SimulatorSource, StacSource


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
    models: dict[str, type[SimulatorSource] | type[SentinelHubSource] | type[StacSource]] = {
        "simulator": SimulatorSource,
        "sentinelhub": SentinelHubSource,
        "stac": StacSource,
    }
    try:
        return models[args.source].model_validate(values)
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
        f"wrote {out}: {len(eopatch.get_timestamps())} acquisitions of {width} x {height} px at {resolution:g} m "
        f"in EPSG:{bbox.crs.epsg} from {source.kind}"
        + (f", {n_parcels} parcels with reference masks" if reference else ", no parcels")
    )
    return 0

"""The ``s2agri export`` command: arguments in, a workflow of :mod:`s2agri.workflows.export` called, results printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_PROBA
from s2agri.tasks.vector_export import vector_format, write_vector
from s2agri.tasks.vectorise import PARCELS_PRED
from s2agri.workflows.export import export_rasters, merged_parcels
from s2agri.workflows.runs import find_boxes, preflight


def export_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri export``."""
    if args.parcels is None and args.submission is None and args.proba is None:
        raise S2AgriInputError("nothing to export: give --parcels FILE, --submission DIR and/or --proba DIR")
    if args.parcels is not None:
        vector_format(Path(args.parcels))
        if Path(args.parcels).exists() and not args.overwrite:
            raise S2AgriInputError(f"{args.parcels} exists: choose another path or add --overwrite")
    boxes = find_boxes(args.boxes)
    needed = [PARCELS_PRED] if args.parcels is not None else []
    needed += [PRED_CULTIVATED] if args.submission is not None else []
    needed += [PRED_PROBA] if args.proba is not None else []
    preflight(boxes, needed)
    if args.parcels is not None:
        parcels = merged_parcels(boxes)
        write_vector(parcels, Path(args.parcels), args.layer)
        print(
            f"wrote {len(parcels)} parcels of {len(boxes)} boxes to {args.parcels} (EPSG:{parcels.crs.to_epsg()})"
        )
    if args.submission is not None or args.proba is not None:
        export_rasters(
            boxes,
            None if args.submission is None else Path(args.submission),
            None if args.proba is None else Path(args.proba),
        )
        for name, folder in (("submission GeoTIFFs", args.submission), ("probability COGs", args.proba)):
            if folder is not None:
                print(f"wrote {len(boxes)} {name} to {folder}")
    return 0

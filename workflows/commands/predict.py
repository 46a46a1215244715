"""The ``s2agri predict`` command: arguments in, a workflow of :mod:`s2agri.workflows.predict` called, results printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s2agri.workflows.config import MappingConfig, load_config, read_config_mapping
from s2agri.workflows.mapping import required_inputs
from s2agri.workflows.model_store import load_trained, with_model_inputs
from s2agri.workflows.predict import (
    EXIT_SOME_FAILED,
    PARCEL_STATS_FILE,
    PARCEL_STATS_LAYER,
    PARCELS_FILE,
    PARCELS_LAYER,
    check_parcel_boxes,
    predict_boxes,
)
from s2agri.workflows.runs import check_out, find_boxes, preflight, staged_folder


def _resolved_config(args: argparse.Namespace) -> MappingConfig:
    config = load_config(args.config)
    if args.workers is not None:
        config = config.model_copy(update={"workers": args.workers})
    return MappingConfig.model_validate(config.model_dump())


def predict_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri predict``."""
    config = _resolved_config(args)
    model_inputs = [args.model] if Path(args.model).exists() else []
    out = check_out(args.out, args.overwrite, inputs=[*args.boxes, *model_inputs])
    trained = load_trained(args.model)
    config = with_model_inputs(trained, config, read_config_mapping(args.config) if args.config else {})
    boxes = find_boxes(args.boxes)
    if trained.is_parcel:
        check_parcel_boxes(boxes, trained.name)
    preflight(boxes, required_inputs(config, parcels=trained.is_parcel))
    with staged_folder(out) as staging:
        summary = predict_boxes(boxes, trained, config, staging, config.workers)
    done = len(summary.succeeded)
    print(f"predicted {done} of {len(boxes)} boxes with {trained.name} into {out}")
    print(f"  parcels:     {out / PARCELS_FILE} (layer '{PARCELS_LAYER}')")
    if trained.is_parcel and done:
        print(f"  statistics:  {out / PARCEL_STATS_FILE} (layer '{PARCEL_STATS_LAYER}')")
    print(f"  submission:  {out / 'submission'}")
    if summary.report is not None:
        print(f"  report:      {out / summary.report}")
    if summary.failures:
        sys.stderr.write(f"s2agri: error: {summary.failure_line()}; see {out / 'failed.json'}\n")
        return EXIT_SOME_FAILED
    return 0

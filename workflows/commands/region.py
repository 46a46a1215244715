"""The ``s2agri run`` command: arguments in, a workflow of :mod:`s2agri.workflows.region` called, results printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from s2agri.workflows.region import (
    DATA,
    FAILED_FILE,
    MOSAIC,
    PREDICT,
    EngineConfig,
    load_region_config,
    run_region,
)


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri run``."""
    config = load_region_config(args.config)
    engine = config.engine.model_dump()
    if args.workers is not None:
        engine["workers"] = args.workers
    if args.engine is not None:
        engine["kind"] = args.engine
    if args.ray_address is not None:
        engine.update(kind="ray", ray_address=args.ray_address)
    config = config.model_copy(update={"engine": EngineConfig.model_validate(engine)})
    out = Path(args.out)
    summary = run_region(config, out, resume=args.resume, retry_failed=args.retry_failed, yes=args.yes)
    print(
        f"mapped {summary['done']} of {summary['boxes']} boxes into {out} "
        f"({summary['ran'][DATA]} simulated, {summary['ran'][PREDICT]} predicted in this run; "
        f"{summary['seconds']['total']:.0f} s with {config.engine.kind} x {config.engine.workers})"
    )
    print(
        f"  parcels:  {', '.join(str(out / f'parcels.{fmt}') for fmt in config.export.formats)} ({summary['parcels']})"
    )
    if config.export.mosaics:
        print(f"  mosaics:  {out / MOSAIC}")
    if summary["failed"]:
        import sys

        sys.stderr.write(
            f"s2agri: error: {summary['failed']} boxes failed, see {out / FAILED_FILE}; "
            "rerun with --resume --retry-failed\n"
        )
        return 1
    return 0

"""The ``s2agri simulate`` command: arguments in, a workflow of :mod:`s2agri.workflows.simulate` called, results printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.sources.simulator import max_frames
from s2agri.workflows.simulate import LOGGER, MAX_BOXES, MAX_SIZE, MIN_SIZE, PARCELS_LAYER, simulate_region


def check_arguments(args: argparse.Namespace) -> Path:
    """Validate the simulate arguments; raise S2AgriInputError naming the problem and the fix."""
    if not 1 <= args.boxes <= MAX_BOXES:
        raise S2AgriInputError(f"--boxes {args.boxes} is out of range: give 1 to {MAX_BOXES}")
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        raise S2AgriInputError(
            f"--size {args.size} is out of range: give {MIN_SIZE} to {MAX_SIZE} pixels (500 = a challenge box)"
        )
    if not 0 <= args.seed < 2**63:
        raise S2AgriInputError(f"--seed {args.seed} is invalid: give a non-negative integer below 2**63")
    most = max_frames(args.seed)
    if not 1 <= args.frames_min <= args.frames_max <= most:
        raise S2AgriInputError(
            f"--frames-min {args.frames_min} / --frames-max {args.frames_max} are invalid: "
            f"need 1 <= min <= max <= {most} (acquisitions of two orbits over 2019-03..09)"
        )
    if args.workers < 1:
        raise S2AgriInputError(f"--workers {args.workers} is invalid: give 1 or more")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise S2AgriInputError(f"OUT {out} exists and is not a folder: choose another path")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise S2AgriInputError(f"OUT {out} exists and is not empty: choose another path or add --overwrite")
    return out


def simulate_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri simulate``."""
    out = check_arguments(args)
    LOGGER.info("simulating %d boxes of %d px (seed %d) into %s", args.boxes, args.size, args.seed, out)
    parcels = simulate_region(
        out, args.boxes, args.size, args.seed, args.frames_min, args.frames_max, args.workers
    )
    print(f"wrote {args.boxes} EOPatches to {out / 'eopatches'}")
    print(
        f"wrote {len(parcels)} parcels to {out / 'parcels.gpkg'} (layer '{PARCELS_LAYER}', EPSG:{contract.CHALLENGE_CRS_EPSG})"
    )
    return 0

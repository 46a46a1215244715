"""``s2agri aoi``: areas of interest for regional batch mapping.

``s2agri aoi split AOI --size 5000 --out grid.gpkg`` reads the AOI (a vector file, or ``demo``: the
AOI shipped with s2agri, as in a region config), checks it
(:func:`~s2agri.aoi.grid.check_aoi`), splits it into a UTM grid of boxes
(:func:`~s2agri.aoi.grid.split_aoi`) and writes the grid under a temporary name renamed into
place. Every check runs before anything is written, so bad input leaves no file behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import shapely

from s2agri.aoi import demo_aoi_path
from s2agri.aoi.grid import check_aoi, grid_format, read_aoi, split_aoi, write_grid
from s2agri.tasks.errors import S2AgriInputError


def split_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri aoi split``."""
    out = Path(args.out)
    grid_format(out)
    if out.exists() and not args.overwrite:
        raise S2AgriInputError(f"{out} exists: choose another path or add --overwrite")
    source = demo_aoi_path() if args.aoi == "demo" and not Path(args.aoi).exists() else args.aoi
    aoi = check_aoi(read_aoi(source, args.layer), repair=args.repair, crs=args.crs)
    grid = split_aoi(aoi, args.size, args.buffer, max_boxes=args.max_boxes, confirm_large=args.yes)
    write_grid(grid, out, overwrite=args.overwrite)
    epsg = int(grid["epsg"].iloc[0])
    boxes_km2 = len(grid) * (args.size / 1000) ** 2
    aoi_km2 = shapely.union_all(aoi.geometry.to_numpy()).area / 1e6
    print(
        f"split the AOI ({aoi_km2:.2f} km²) into {len(grid)} boxes of {args.size} m "
        f"(buffer {args.buffer} m, EPSG:{epsg}, {boxes_km2:.2f} km² in all): wrote {out}"
    )
    return 0


#: Sub-actions of ``s2agri aoi``.
ACTIONS = {"split": split_command}


def aoi_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri aoi``: runs the chosen action."""
    return ACTIONS[args.action](args)

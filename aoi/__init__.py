"""Areas of interest (AOI) for regional batch mapping: read, check and split into a UTM grid of boxes.

The work lives in :mod:`s2agri.aoi.grid` (``read_aoi``, ``check_aoi``, ``split_aoi``,
``box_bbox``, ``write_grid``) (the ``s2agri aoi`` command is :mod:`s2agri.workflows.commands.aoi`).
This module stays light (no geopandas import) so the command line can read its defaults
without slowing ``s2agri --help``.
"""

from __future__ import annotations

from pathlib import Path

#: Side of a grid box in metres (the challenge boxes are 500 px x 10 m = 5 km).
DEFAULT_SIZE_M = 5000
#: Most boxes a split makes without ``confirm_large=True`` (``s2agri aoi split --yes``).
DEFAULT_MAX_BOXES = 1000

_DEMO_AOI = "demo_aoi.geojson"


def demo_aoi_path() -> Path:
    """The demo AOI shipped with s2agri: one irregular polygon in EPSG:32633 inside the simulator's
    world (x 452300..464100 m, y 5081100..5089100 m), which splits into 5 boxes of 5 km."""
    return Path(__file__).with_name(_DEMO_AOI)

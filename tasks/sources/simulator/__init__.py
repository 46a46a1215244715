"""A realistic Sentinel-2 L2A scene simulator: s2agri's embedded default data source."""

from .landscape import generate_landscape
from .scene import BoxSimulator, acquisition_dates, box_bbox, max_frames, simulate_eopatch
from .task import SimulatorInputTask

__all__ = [
    "BoxSimulator",
    "SimulatorInputTask",
    "acquisition_dates",
    "box_bbox",
    "generate_landscape",
    "max_frames",
    "simulate_eopatch",
]

"""Keep the acquisitions of a time interval: eo-learn's ``FilterTimeSeriesTask`` with whole days."""

from __future__ import annotations

import datetime as dt

from eolearn.core import EOPatch
from eolearn.features import FilterTimeSeriesTask

from s2agri.tasks.errors import S2AgriSourceError


class TimeIntervalFilterTask(FilterTimeSeriesTask):
    """Keep frames from ``start`` 00:00 to ``end`` 23:59:59 (dates inclusive); no frame left is an error."""

    def __init__(self, start: dt.date, end: dt.date):
        super().__init__(dt.datetime.combine(start, dt.time.min), dt.datetime.combine(end, dt.time.max))
        self.start, self.end = start, end

    def execute(self, eopatch: EOPatch) -> EOPatch:
        filtered = super().execute(eopatch)
        if not filtered.timestamps:
            raise S2AgriSourceError(
                f"no acquisition of the box between {self.start} and {self.end}: widen the time interval"
            )
        return filtered

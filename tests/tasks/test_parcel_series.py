"""Parcel model inputs from PARCEL_STATS series (s2agri.tasks.parcel_series)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from s2agri.tasks.parcel_series import fill_missing, monthly_composites

NAN = np.nan


def test_fill_missing_forward_backward_zero() -> None:
    series = np.array(
        [
            [[NAN, NAN], [1.0, 2.0], [NAN, 5.0], [3.0, 4.0], [NAN, NAN]],  # any NaN: the step is missing
            [[NAN, NAN]] * 5,
            [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0], [5.0, 5.0]],
        ]
    )
    filled = fill_missing(series)
    expected = np.array(
        [
            [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [3.0, 4.0]],
            [[0.0, 0.0]] * 5,
            series[2],
        ]
    )
    np.testing.assert_array_equal(filled, expected)
    masked = fill_missing(series[2:], missing=np.array([[True, False, True, False, True]]))
    np.testing.assert_array_equal(masked[0, :, 0], [2.0, 2.0, 2.0, 4.0, 4.0])


def test_monthly_composites_are_medians() -> None:
    dates = [
        dt.date(2019, 3, 5),
        dt.date(2019, 3, 15),
        dt.date(2019, 3, 25),
        dt.date(2019, 4, 10),
        dt.date(2019, 6, 1),
    ]
    series = np.array([[[1.0], [5.0], [2.0], [NAN], [7.0]], [[NAN], [4.0], [6.0], [3.0], [NAN]]])
    bins = monthly_composites(series, dates, months=(3, 4, 5, 6))
    np.testing.assert_array_equal(bins[..., 0], [[2.0, NAN, NAN, 7.0], [5.0, 3.0, NAN, NAN]])


# --------------------------------------------------------------------------- GIS attributes

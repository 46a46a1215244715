"""Monthly medians (seed 004): hand-computed example, filling of empty months, EOTask storage."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pytest
from eolearn.core import EOPatch, FeatureType
from sentinelhub import CRS, BBox

from s2agri.tasks.masks import VALID
from s2agri.tasks.monthly import (
    MONTHLY_COUNTS,
    MONTHLY_MEDIANS,
    MONTHS,
    MonthlyMedianTask,
    fill_missing_months,
    masked_median,
    monthly_medians,
    pack_monthly,
    resolve_months,
    unpack_monthly,
)
from s2agri.tasks.tensors import STACK

# Frames: 3 in March, 2 in April, 3 in May 2019 (none in June). Pixels (row 0):
#   A: March 0.1, 0.5 valid, 0.9 cloudy -> 0.3; April all cloudy -> (0.3 + 0.4) / 2 = 0.35;
#      May 0.2, 0.4, 0.6 -> 0.4; June no frame -> nearest 0.4 (or 0).
#   B: March 0.2, 0.3 valid, 0.7 cloudy -> 0.25; April 0.8, 0.6 -> 0.7; May all cloudy and
#      June empty: after the last valid month -> nearest 0.7 (or 0).
#   C: never valid -> 0 everywhere.
DAYS = [(3, 3), (3, 13), (3, 23), (4, 7), (4, 17), (5, 2), (5, 12), (5, 22)]
TIMESTAMPS = [dt.datetime(2019, m, d, 10, 0) for m, d in DAYS]
VALUES = {
    "A": ([0.1, 0.5, 0.9, 0.7, 0.1, 0.2, 0.6, 0.4], [1, 1, 0, 0, 0, 1, 1, 1]),
    "B": ([0.2, 0.7, 0.3, 0.8, 0.6, 0.5, 0.5, 0.5], [1, 0, 1, 1, 1, 0, 0, 0]),
    "C": ([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], [0, 0, 0, 0, 0, 0, 0, 0]),
}
EXPECTED = {  # (medians with edges="nearest", edges="zero", counts) for months 3, 4, 5, 6
    "A": ([0.3, 0.35, 0.4, 0.4], [0.3, 0.35, 0.4, 0.0], [2, 0, 3, 0]),
    "B": ([0.25, 0.7, 0.7, 0.7], [0.25, 0.7, 0.0, 0.0], [2, 2, 0, 0]),
    "C": ([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0, 0, 0, 0]),
}


def example() -> tuple[np.ndarray, np.ndarray]:
    """(T, 1, 3, 2) stack (band 1 = 10 x band 0 + 1) and (T, 1, 3) valid mask."""
    band = np.array([VALUES[p][0] for p in "ABC"], np.float32).T[:, None, :]  # (T, 1, 3)
    valid = np.array([VALUES[p][1] for p in "ABC"], bool).T[:, None, :]
    return np.stack([band, 10 * band + 1], axis=-1), valid


@pytest.mark.parametrize(("edges", "column"), [("nearest", 0), ("zero", 1)])
def test_hand_computed_example(edges: str, column: int) -> None:
    stack, valid = example()
    medians, counts = monthly_medians(stack, valid, TIMESTAMPS, months=[3, 4, 5, 6], edges=edges)
    assert medians.shape == (4, 1, 3, 2) and medians.dtype == np.float32
    assert counts.shape == (4, 1, 3) and counts.dtype == np.uint16
    for j, pixel in enumerate("ABC"):
        expected = np.array(EXPECTED[pixel][column], np.float32)
        np.testing.assert_allclose(medians[:, 0, j, 0], expected, rtol=1e-6)
        # band 1 = 10 band 0 + 1 where filled from data; 0 stays 0 (no data at all, or "zero" edges)
        np.testing.assert_allclose(
            medians[:, 0, j, 1], np.where(expected > 0, 10 * expected + 1, 0), rtol=1e-6
        )
        np.testing.assert_array_equal(counts[:, 0, j], EXPECTED[pixel][2])


def test_matches_nanmedian_and_ignores_invalid_values() -> None:
    rng = np.random.default_rng(0)
    T, H, W, C = 11, 5, 6, 3
    stack = rng.random((T, H, W, C)).astype(np.float32)
    valid = rng.random((T, H, W)) > 0.4
    stack[~valid] = np.nan  # invalid observations may hold anything
    timestamps = [dt.date(2019, 3 + t // 4, 1 + t) for t in range(T)]  # months 3, 4, 5
    medians, counts = monthly_medians(stack, valid[..., None], timestamps)
    for m, month in enumerate((3, 4, 5)):
        frames = [t for t, ts in enumerate(timestamps) if ts.month == month]
        data = np.where(valid[frames][..., None], stack[frames], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
            expected = np.nanmedian(data, axis=0)
        has = counts[m] > 0
        np.testing.assert_allclose(medians[m][has], expected[has], rtol=1e-6)
        np.testing.assert_array_equal(counts[m], valid[frames].sum(axis=0))


def test_masked_median_hand_computed_even_odd_and_empty() -> None:
    # one pixel, one channel; frames (value, valid): 5 ok, 1 ok, 9 invalid, 3 ok, 7 ok
    values = np.array([5, 1, 9, 3, 7], np.float32).reshape(5, 1, 1, 1)
    valid = np.array([1, 1, 0, 1, 1], bool).reshape(5, 1, 1)
    median, count = masked_median(values, valid)  # valid 1 3 5 7: (3 + 5) / 2
    assert median.dtype == np.float32 and median.shape == (1, 1, 1)
    assert median[0, 0, 0] == 4.0 and count[0, 0] == 4
    valid[0] = False  # valid 1 3 7: 3
    assert masked_median(values, valid)[0][0, 0, 0] == 3.0
    median, count = masked_median(values, np.zeros_like(valid))
    assert np.isnan(median[0, 0, 0]) and count[0, 0] == 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        masked_median(np.full_like(values, np.nan), valid)


def test_fill_interpolates_linearly_between_distant_months() -> None:
    has = np.array([True, False, False, True, False])[:, None, None]
    medians = np.array([0.2, 0.0, 0.0, 0.8, 0.0], np.float32).reshape(5, 1, 1, 1)
    fill_missing_months(medians, has)
    np.testing.assert_allclose(medians.ravel(), [0.2, 0.4, 0.6, 0.8, 0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="edges"):
        fill_missing_months(medians, has, edges="linear")  # type: ignore[arg-type]


def test_month_selection_and_errors() -> None:
    stack, valid = example()
    # months=None: March to May; frames outside the listed months are ignored
    assert resolve_months(TIMESTAMPS).tolist() == [3, 4, 5]
    medians, counts = monthly_medians(stack, valid, TIMESTAMPS, months=[4])
    np.testing.assert_allclose(medians[0, 0, :, 0], [0.0, 0.7, 0.0], rtol=1e-6)  # A: no valid month
    assert counts[0, 0].tolist() == [0, 2, 0]
    for bad in ([5, 4], [0, 1], [13], []):
        with pytest.raises(ValueError, match="months"):
            monthly_medians(stack, valid, TIMESTAMPS, months=bad)
    with pytest.raises(ValueError, match="one year"):
        monthly_medians(stack, valid, [*TIMESTAMPS[:-1], dt.datetime(2020, 1, 1)])
    with pytest.raises(ValueError, match="timestamps"):
        monthly_medians(stack, valid, TIMESTAMPS[:-1])
    with pytest.raises(ValueError, match="valid"):
        monthly_medians(stack, valid[:, 0], TIMESTAMPS)
    bad_stack = stack.copy()
    bad_stack[0, 0, 0, 0] = np.inf  # a valid observation
    with pytest.raises(ValueError, match="NaN or infinite"):
        monthly_medians(bad_stack, valid, TIMESTAMPS)


def test_eotask_stores_timeless_month_major_features(tmp_path) -> None:
    stack, valid = example()
    patch = EOPatch(bbox=BBox((500000, 5100000, 500030, 5100010), CRS(32633)), timestamps=TIMESTAMPS)
    patch[STACK] = stack
    patch[VALID] = valid[..., None]
    task = MonthlyMedianTask(months=[3, 4, 5, 6])
    out = task.execute(patch)
    packed = out[MONTHLY_MEDIANS]
    assert packed.shape == (1, 3, 4 * 2) and packed.dtype == np.float32
    expected, counts = monthly_medians(stack, valid, TIMESTAMPS, months=[3, 4, 5, 6])
    np.testing.assert_array_equal(unpack_monthly(packed, 4), expected)
    np.testing.assert_array_equal(packed[0, 0, 2:4], expected[1, 0, 0])  # month-major channels
    np.testing.assert_array_equal(pack_monthly(expected), packed)
    np.testing.assert_array_equal(out[MONTHLY_COUNTS], counts.transpose(1, 2, 0))
    assert out[MONTHS].tolist() == [3, 4, 5, 6]
    out.save(str(tmp_path / "box"))
    loaded = EOPatch.load(str(tmp_path / "box"))
    np.testing.assert_array_equal(loaded[MONTHLY_MEDIANS], packed)
    # months=None follows the frames; no counts / months features when asked
    patch2 = MonthlyMedianTask(
        output_feature=(FeatureType.DATA_TIMELESS, "M"), counts_feature=None, months_feature=None
    ).execute(
        EOPatch(
            bbox=patch.bbox, timestamps=TIMESTAMPS, data={"STACK": stack}, mask={"VALID": valid[..., None]}
        )
    )
    assert patch2[(FeatureType.DATA_TIMELESS, "M")].shape == (1, 3, 3 * 2)
    assert MONTHLY_COUNTS not in patch2 and MONTHS not in patch2
    with pytest.raises(ValueError, match="no mask/VALID"):
        MonthlyMedianTask().execute(EOPatch(bbox=patch.bbox, timestamps=TIMESTAMPS, data={"STACK": stack}))

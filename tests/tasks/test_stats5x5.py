"""5x5 neighbourhood statistics: numba kernels against the plain-numpy reference, hand cases, EOTask."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest
from eolearn.core import EOPatch, FeatureType

from s2agri.tasks import stats5x5
from s2agri.tasks.contract import BAND_NAMES
from s2agri.tasks.stats5x5 import (
    STAT_NAMES,
    NeighbourhoodStatisticsTask,
    feature_names,
    merge_exchange_network,
    merge_runs_network,
    neighbourhood_statistics,
    reference_neighbourhood_statistics,
)

MODES = ("per_frame", "pooled")
STAT = {name: k for k, name in enumerate(STAT_NAMES)}


def random_stack(
    seed: int, shape: tuple[int, int, int, int] = (4, 13, 11, 2), p_valid: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Random reflectances with random gaps, a whole-invalid frame, a hole with no valid value, NaNs."""
    rng = np.random.default_rng(seed)
    values = rng.random(shape, dtype=np.float32) * 0.6
    valid = rng.random(shape[:3]) < p_valid
    valid[1] = False  # a frame with no usable value at all
    valid[:, :4, :4] = False  # pixels whose 3x3 (and 1x1) windows never see a usable value
    values[0, 5, 5, :] = np.nan  # a NaN under valid=True counts as unusable
    valid[0, 5, 5] = True
    return values, valid


def assert_matches_reference(values: np.ndarray, valid: np.ndarray, mode: str, window: int) -> np.ndarray:
    fast = neighbourhood_statistics(values, valid, mode=mode, window=window)
    slow = reference_neighbourhood_statistics(values, valid, mode=mode, window=window)
    assert fast.dtype == np.float32
    assert fast.shape == (values.shape[1], values.shape[2], 8 * values.shape[3])
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5, equal_nan=True)
    return fast


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window", [1, 3, 5, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_random(mode: str, window: int, seed: int) -> None:
    values, valid = random_stack(seed)
    out = assert_matches_reference(values, valid, mode, window)
    if window <= 3:  # the 4x4 hole has pixels whose whole window is unusable in every frame
        assert np.isnan(out[0, 0]).all()
    assert not np.isnan(out[-1, -1]).any()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window", [3, 5])
def test_integer_values_with_ties(mode: str, window: int) -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 4, size=(5, 12, 9, 3)).astype(np.float32)
    valid = rng.random((5, 12, 9)) < 0.7
    assert_matches_reference(values, valid, mode, window)


@pytest.mark.parametrize("mode", MODES)
def test_large_values_and_negative(mode: str) -> None:
    """DN-scale and negative values: shifted sums keep mean/std exact enough."""
    rng = np.random.default_rng(3)
    values = (rng.integers(-50, 10000, size=(3, 9, 10, 2))).astype(np.float32)
    valid = rng.random((3, 9, 10)) < 0.8
    fast = neighbourhood_statistics(values, valid, mode=mode)
    slow = reference_neighbourhood_statistics(values, valid, mode=mode)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("mode", MODES)
def test_constant_input(mode: str) -> None:
    values = np.full((3, 8, 7, 2), 0.3125, dtype=np.float32)
    valid = np.random.default_rng(1).random((3, 8, 7)) < 0.5
    valid[:, 0, 0] = True
    out = assert_matches_reference(values, valid, mode, 5).reshape(8, 7, 2, 8)
    for name in ("min", "max", "mean", "median", "q1", "q3"):
        np.testing.assert_array_equal(out[..., STAT[name]], 0.3125)
    np.testing.assert_array_equal(out[..., STAT["std"]], 0.0)
    np.testing.assert_array_equal(out[..., STAT["span"]], 0.0)


def test_pooled_in_many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row blocks of the pooled mode (one row each here) give the same result as one block."""
    values, valid = random_stack(5, shape=(6, 10, 9, 2))
    monkeypatch.setattr(stats5x5, "POOLED_BLOCK_BYTES", 1)
    assert_matches_reference(values, valid, "pooled", 5)
    assert_matches_reference(values, valid, "pooled", 3)


def test_float64_strided_input() -> None:
    values, valid = random_stack(2, shape=(3, 9, 16, 3))
    values64 = values.astype(np.float64)[:, :, ::2, ::-1]
    out = neighbourhood_statistics(values64, valid[:, :, ::2])
    expected = reference_neighbourhood_statistics(values[:, :, ::2, ::-1], valid[:, :, ::2])
    np.testing.assert_allclose(out, expected, atol=1e-5, equal_nan=True)


def test_hand_computed_ramp() -> None:
    """One frame, 5x5 ramp 0..24: the centre sees all 25 values, the corner a truncated 3x3 window."""
    values = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    valid = np.ones((1, 5, 5), dtype=bool)
    for mode in MODES:
        out = neighbourhood_statistics(values, valid, mode=mode)
        centre = dict(zip(STAT_NAMES, out[2, 2].tolist(), strict=True))
        assert centre == pytest.approx(
            {
                "min": 0,
                "max": 24,
                "mean": 12,
                "median": 12,
                "std": np.sqrt(52.0),
                "q1": 6,
                "q3": 18,
                "span": 24,
            }
        )
        corner = dict(zip(STAT_NAMES, out[0, 0].tolist(), strict=True))  # values 0,1,2, 5,6,7, 10,11,12
        assert corner == pytest.approx(
            {
                "min": 0,
                "max": 12,
                "mean": 6,
                "median": 6,
                "std": np.sqrt(156 / 9),
                "q1": 2,
                "q3": 10,
                "span": 12,
            }
        )


def test_per_frame_average_versus_pooled() -> None:
    """Frames 1 and 3 (and an all-invalid frame): per-frame averages per-frame stats, pooled mixes them."""
    values = np.stack([np.full((1, 1, 1), v, np.float32) for v in (1.0, 3.0, 100.0)])
    valid = np.array([True, True, False]).reshape(3, 1, 1)
    per_frame = dict(zip(STAT_NAMES, neighbourhood_statistics(values, valid)[0, 0].tolist(), strict=True))
    assert per_frame == pytest.approx(
        {"min": 2, "max": 2, "mean": 2, "median": 2, "std": 0, "q1": 2, "q3": 2, "span": 0}
    )
    pooled = neighbourhood_statistics(values, valid, mode="pooled")[0, 0]
    assert dict(zip(STAT_NAMES, pooled.tolist(), strict=True)) == pytest.approx(
        {"min": 1, "max": 3, "mean": 2, "median": 2, "std": 1, "q1": 1.5, "q3": 2.5, "span": 2}
    )


@pytest.mark.parametrize("mode", MODES)
def test_no_valid_value_is_nan(mode: str) -> None:
    values = np.ones((2, 4, 3, 2), dtype=np.float32)
    out = neighbourhood_statistics(values, np.zeros((2, 4, 3), dtype=bool), mode=mode)
    assert out.shape == (4, 3, 16)
    assert np.isnan(out).all()
    out = neighbourhood_statistics(values[:0], np.zeros((0, 4, 3), dtype=bool), mode=mode)
    assert np.isnan(out).all()


@pytest.mark.parametrize("window", [1, 3, 5])
def test_networks_sort_by_zero_one_principle(window: int) -> None:
    """Column network sorts any 0/1 column; the merge network merges any ``window`` sorted 0/1 columns."""
    columns = merge_exchange_network(window)
    for bits in itertools.product((0, 1), repeat=window):
        cells = list(bits)
        for i, j in columns:
            cells[i], cells[j] = min(cells[i], cells[j]), max(cells[i], cells[j])
        assert cells == sorted(bits)
    runs = [list(range(dx * window, (dx + 1) * window)) for dx in range(window)]
    merge, order = merge_runs_network(runs)
    assert sorted(order) == list(range(window * window))
    for ones in itertools.product(range(window + 1), repeat=window):  # ones at the top of each column
        cells = [int(r >= window - k) for k in ones for r in range(window)]
        for i, j in merge:
            cells[i], cells[j] = min(cells[i], cells[j]), max(cells[i], cells[j])
        assert [cells[s] for s in order] == sorted(cells)


def test_feature_names() -> None:
    names = feature_names()
    assert len(names) == 96 and len(set(names)) == 96
    assert names[:3] == ["B01_min", "B01_max", "B01_mean"]
    assert names[3 * 8 + STAT["median"]] == "B04_median"
    assert feature_names(["NDVI"]) == [f"NDVI_{s}" for s in STAT_NAMES]


def empty_patch(frames: int) -> EOPatch:
    start = dt.datetime(2019, 3, 1)
    return EOPatch(timestamps=[start + dt.timedelta(days=5 * i) for i in range(frames)])


def make_patch(frames: int = 3, size: int = 9, bands: int = 12) -> EOPatch:
    rng = np.random.default_rng(11)
    patch = empty_patch(frames)
    patch[FeatureType.DATA, "REFLECTANCE"] = rng.random((frames, size, size, bands), dtype=np.float32)
    patch[FeatureType.MASK, "VALID"] = rng.random((frames, size, size, 1)) < 0.7
    return patch


@pytest.mark.parametrize("mode", MODES)
def test_task_adds_feature_and_names(mode: str) -> None:
    patch = make_patch()
    result = NeighbourhoodStatisticsTask(mode=mode).execute(patch)
    stats = result[FeatureType.DATA_TIMELESS, "STATS5X5"]
    assert stats.shape == (9, 9, 96)
    assert stats.dtype == np.float32
    assert result.meta_info["STATS5X5_FEATURES"] == feature_names(BAND_NAMES)
    expected = neighbourhood_statistics(
        patch[FeatureType.DATA, "REFLECTANCE"], patch[FeatureType.MASK, "VALID"][..., 0], mode=mode
    )
    np.testing.assert_array_equal(stats, expected)


def test_task_custom_features_and_band_names() -> None:
    patch = empty_patch(2)
    patch[FeatureType.DATA, "NDVI"] = np.random.default_rng(0).random((2, 6, 5, 1), dtype=np.float32)
    patch[FeatureType.MASK, "CLEAR"] = np.ones((2, 6, 5, 1), dtype=np.uint8)
    task = NeighbourhoodStatisticsTask(
        (FeatureType.DATA, "NDVI"),
        (FeatureType.MASK, "CLEAR"),
        (FeatureType.DATA_TIMELESS, "NDVI_STATS"),
        window=3,
        band_names=["NDVI"],
    )
    result = task.execute(patch)
    assert result[FeatureType.DATA_TIMELESS, "NDVI_STATS"].shape == (6, 5, 8)
    assert result.meta_info["NDVI_STATS_FEATURES"] == feature_names(["NDVI"])
    three = NeighbourhoodStatisticsTask((FeatureType.DATA, "NDVI"), (FeatureType.MASK, "CLEAR"))
    patch[FeatureType.DATA, "NDVI"] = np.zeros((2, 6, 5, 3), dtype=np.float32)
    assert three.execute(patch).meta_info["STATS5X5_FEATURES"][:1] == ["band00_min"]


def test_bad_inputs() -> None:
    values = np.zeros((2, 5, 5, 3), dtype=np.float32)
    valid = np.ones((2, 5, 5), dtype=bool)
    with pytest.raises(ValueError, match="valid must have shape"):
        neighbourhood_statistics(values, valid[:, :4])
    with pytest.raises(ValueError, match="valid must have shape"):
        neighbourhood_statistics(values, valid[..., None])
    with pytest.raises(ValueError, match=r"values must have shape \(T, H, W, C\)"):
        neighbourhood_statistics(values[0], valid[0])
    for window in (4, 0, -1, 2.0, True):
        with pytest.raises(ValueError, match="window must be an odd integer"):
            neighbourhood_statistics(values, valid, window=window)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be one of"):
        neighbourhood_statistics(values, valid, mode="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window must be an odd integer"):
        reference_neighbourhood_statistics(values, valid, window=6)


def test_task_bad_inputs() -> None:
    with pytest.raises(ValueError, match="window must be an odd integer"):
        NeighbourhoodStatisticsTask(window=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        NeighbourhoodStatisticsTask(mode="mean")  # type: ignore[arg-type]
    patch = make_patch(size=6)
    patch[FeatureType.MASK, "VALID"] = np.ones((3, 5, 6, 1), dtype=bool)
    with pytest.raises(ValueError, match=r"VALID .* and REFLECTANCE .* disagree"):
        NeighbourhoodStatisticsTask().execute(patch)
    patch[FeatureType.MASK, "VALID"] = np.ones((3, 6, 6, 2), dtype=bool)
    with pytest.raises(ValueError, match=r"VALID must have shape \(T, H, W, 1\)"):
        NeighbourhoodStatisticsTask().execute(patch)
    patch = make_patch(size=6)
    with pytest.raises(ValueError, match="2 band_names given but REFLECTANCE has 12 bands"):
        NeighbourhoodStatisticsTask(band_names=["B04", "B08"]).execute(patch)

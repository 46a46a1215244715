"""Reflectance, validity masks, frame filter and valid counts (s2agri.tasks.masks)."""

from __future__ import annotations

import numpy as np
import pytest
from eolearn.core import FeatureType
from eolearn.features import SimpleFilterTask
from eopatch_factory import build_eopatch

from s2agri.tasks import contract
from s2agri.tasks.masks import (
    REFLECTANCE,
    SCL_INVALID_DEFAULT,
    VALID,
    VALID_COUNT,
    ReflectanceTask,
    ValidCountTask,
    ValidMaskTask,
    valid_frame_filter,
)


def test_reflectance_is_dn_times_factor_per_frame_in_float32() -> None:
    patch = build_eopatch(reference=False)
    rng = np.random.default_rng(0)
    bands = rng.integers(0, contract.MAX_DN + 1, patch[contract.BANDS].shape, dtype=np.uint16)
    patch[contract.BANDS] = bands
    factors = np.array([[1e-4], [2e-4], [1e-4]], dtype=np.float32)
    patch[contract.NORM_FACTORS] = factors
    patch[contract.IS_DATA][1] = False  # no-data pixels are converted like any other

    out = ReflectanceTask().execute(patch)[REFLECTANCE]

    assert out.dtype == np.float32
    assert out.shape == bands.shape
    expected = bands.astype(np.float32) * factors[:, None, None, :]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0], bands[0].astype(np.float32) * np.float32(1e-4))


def test_reflectance_clips_digital_numbers_above_10000() -> None:
    patch = build_eopatch(reference=False)
    patch[contract.BANDS][0, 0, 0, :] = 10500
    patch[contract.BANDS][0, 0, 1, :] = contract.MAX_DN

    out = ReflectanceTask().execute(patch)[REFLECTANCE]

    one = np.float32(contract.MAX_DN) * np.float32(contract.NORM_FACTOR)
    assert np.all(out[0, 0, 0] == one)
    assert np.all(out[0, 0, 1] == one)
    with pytest.raises(ValueError, match="10500 > 10000"):
        ReflectanceTask(clip=False).execute(patch)


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (np.nan, np.float32, "NaN"),
        (-1, np.int32, "negative"),
        (70000, np.float64, "70000"),
    ],
)
def test_reflectance_rejects_bad_digital_numbers(value: float, dtype: type, message: str) -> None:
    patch = build_eopatch(reference=False)
    bands = patch[contract.BANDS].astype(dtype)
    bands[1, 2, 3, 4] = value
    patch[contract.BANDS] = bands
    with pytest.raises(ValueError, match=message):
        ReflectanceTask().execute(patch)


@pytest.mark.filterwarnings("ignore::eolearn.core.exceptions.TemporalDimensionWarning")
@pytest.mark.parametrize(
    "factors", [np.full((2, 1), 1e-4, np.float32), np.array([[1e-4], [0.0], [1e-4]], np.float32)]
)
def test_reflectance_rejects_bad_norm_factors(factors: np.ndarray) -> None:
    patch = build_eopatch(reference=False)
    patch[contract.NORM_FACTORS] = factors
    with pytest.raises(ValueError, match="NORM_FACTORS"):
        ReflectanceTask().execute(patch)


def test_reflectance_names_a_missing_feature() -> None:
    patch = build_eopatch(reference=False)
    del patch[contract.BANDS]
    with pytest.raises(ValueError, match="data/BANDS"):
        ReflectanceTask().execute(patch)


def _one_row_patch(is_data: list[bool], clm: list[int], clp: list[int], scl: list[int]):
    """A 1-frame, 1-row patch whose columns enumerate the given mask values."""
    patch = build_eopatch(frames=1, size=len(is_data), reference=False)
    width = len(is_data)
    patch[contract.IS_DATA] = np.tile(np.array(is_data, bool).reshape(1, 1, -1, 1), (1, width, 1, 1))
    for feature, values in ((contract.CLM, clm), (contract.CLP, clp), (contract.SCL, scl)):
        patch[feature] = np.tile(np.array(values, np.uint8).reshape(1, 1, -1, 1), (1, width, 1, 1))
    return patch


# Columns: IS_DATA, CLM, CLP (x255), SCL of each pixel of the truth table.
IS_DATA = [True, False, True, True, True, True, True, False]
CLM = [0, 0, 1, 0, 0, 0, 0, 1]
CLP = [0, 0, 0, 127, 128, 255, 0, 255]
SCL = [4, 4, 4, 4, 4, 4, 9, 9]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [1, 0, 0, 1, 1, 1, 1, 0]),
        ({"use_clm": False}, [1, 0, 1, 1, 1, 1, 1, 0]),
        ({"clp_threshold": 0.5}, [1, 0, 0, 1, 0, 0, 1, 0]),  # 127/255 = 0.498 kept, 128/255 dropped
        ({"clp_threshold": 1.0}, [1, 0, 0, 1, 1, 1, 1, 0]),
        ({"scl_invalid_classes": SCL_INVALID_DEFAULT}, [1, 0, 0, 1, 1, 1, 0, 0]),
        (
            {"use_clm": False, "clp_threshold": 0.5, "scl_invalid_classes": (9,)},
            [1, 0, 1, 1, 0, 0, 0, 0],
        ),
    ],
)
def test_valid_mask_truth_table(kwargs: dict, expected: list[int]) -> None:
    patch = _one_row_patch(IS_DATA, CLM, CLP, SCL)

    valid = ValidMaskTask(**kwargs).execute(patch)[VALID]

    assert valid.dtype == bool
    assert valid.shape == (1, len(IS_DATA), len(IS_DATA), 1)
    np.testing.assert_array_equal(valid[0, 0, :, 0], np.array(expected, bool))
    assert np.all(valid == valid[:, :1])  # every row equal


@pytest.mark.parametrize(
    "kwargs", [{"clp_threshold": 1.5}, {"clp_threshold": -0.1}, {"scl_invalid_classes": (12,)}]
)
def test_valid_mask_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ValidMaskTask(**kwargs)


def test_valid_mask_rejects_a_non_uint8_cloud_mask() -> None:
    patch = build_eopatch(reference=False)
    patch[contract.CLM] = patch[contract.CLM].astype(np.int16)
    with pytest.raises(ValueError, match="uint8"):
        ValidMaskTask().execute(patch)


def _patch_with_valid_counts(valid_pixels: list[int], size: int = 20):
    """A patch whose frame ``t`` has ``valid_pixels[t]`` valid pixels (first in row-major order)."""
    patch = build_eopatch(frames=len(valid_pixels), size=size, reference=False)
    valid = np.zeros((len(valid_pixels), size * size), bool)
    for t, count in enumerate(valid_pixels):
        valid[t, :count] = True
    patch[VALID] = valid.reshape(len(valid_pixels), size, size, 1)
    patch[contract.BANDS] = np.arange(len(valid_pixels), dtype=np.uint16)[:, None, None, None] * np.ones(
        (1, size, size, 12), np.uint16
    )
    return patch


def test_frame_filter_keeps_frames_at_or_above_the_threshold() -> None:
    patch = _patch_with_valid_counts([400, 380, 379, 200, 390])  # 100 %, 95 %, 94.75 %, 50 %, 97.5 %
    task = valid_frame_filter(0.95)
    assert isinstance(task, SimpleFilterTask)

    out = task.execute(patch)

    assert out[VALID].shape[0] == 3
    np.testing.assert_array_equal(out[contract.BANDS][:, 0, 0, 0], [0, 1, 4])
    assert out.timestamps == [patch.timestamps[i] for i in (0, 1, 4)]
    assert out[contract.NORM_FACTORS].shape == (3, 1)
    assert out.bbox == patch.bbox


def test_frame_filter_raises_when_no_frame_is_left() -> None:
    patch = _patch_with_valid_counts([200, 379, 100])
    with pytest.raises(ValueError, match=r"95\.0% valid pixels \(best frame 94\.8%\)"):
        valid_frame_filter(0.95).execute(patch)


def test_frame_filter_rejects_a_bad_threshold() -> None:
    with pytest.raises(ValueError, match="min_valid_fraction"):
        valid_frame_filter(95)


def test_valid_count_is_a_hand_count() -> None:
    patch = build_eopatch(frames=3, size=2, reference=False)
    valid = np.array(
        [
            [[1, 0], [1, 1]],
            [[1, 0], [0, 1]],
            [[1, 0], [0, 0]],
        ],
        bool,
    )[..., None]
    patch[VALID] = valid

    count = ValidCountTask().execute(patch)[VALID_COUNT]

    assert count.dtype == np.uint16
    assert count.shape == (2, 2, 1)
    np.testing.assert_array_equal(count[..., 0], [[3, 0], [1, 2]])
    assert VALID_COUNT[0] is FeatureType.MASK_TIMELESS


def test_valid_mask_then_count_on_a_patch() -> None:
    patch = build_eopatch(reference=False)
    patch[contract.IS_DATA][:] = True
    patch[contract.CLM][0, :5] = 1
    patch = ValidCountTask().execute(ValidMaskTask().execute(patch))
    count = patch[VALID_COUNT][..., 0]
    assert np.all(count[:5] == 2)
    assert np.all(count[5:] == 3)

"""The starter-pack mean-NDVI rule (s2agri.models.rule) and its prediction task."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from eopatch_factory import build_eopatch

from s2agri.models import rule
from s2agri.tasks import contract
from s2agri.tasks.masks import REFLECTANCE, VALID
from s2agri.tasks.prediction import (
    PRED_CULTIVATED,
    PRED_MODEL_KEY,
    PRED_PROBA,
    NdviRuleTask,
    write_prediction,
)

B04, B08 = contract.BAND_INDEX["B04"], contract.BAND_INDEX["B08"]


def _reflectance(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """(T, H, W, 12) reflectance with the given B04 and B08, other bands 0.3."""
    out = np.full((*red.shape, 12), 0.3, np.float32)
    out[..., B04] = red
    out[..., B08] = nir
    return out


# Three 2 x 2 frames: red and nir of each pixel.
RED = np.array([[[0.1, 0.2], [0.05, 0.3]], [[0.2, 0.2], [0.2, 0.2]], [[0.1, 0.1], [0.1, 0.1]]], np.float32)
NIR = np.array([[[0.5, 0.2], [0.45, 0.1]], [[0.6, 0.6], [0.6, 0.6]], [[0.3, 0.5], [0.4, 0.2]]], np.float32)


def _hand_ndvi(t: int, i: int, j: int) -> float:
    nir, red = float(NIR[t, i, j]), float(RED[t, i, j])
    return (nir - red) / (nir + red)


def test_mean_ndvi_keeps_frames_with_enough_valid_pixels() -> None:
    valid = np.ones((3, 2, 2), bool)
    valid[1, 0, 0] = False  # frame 1: 75 % valid, dropped at 95 %

    out = rule.mean_ndvi(_reflectance(RED, NIR), valid)

    expected = [[(_hand_ndvi(0, i, j) + _hand_ndvi(2, i, j)) / 2 for j in range(2)] for i in range(2)]
    assert out.dtype == np.float32
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_mean_ndvi_averages_every_pixel_of_a_kept_frame() -> None:
    valid = np.ones((3, 2, 2, 1), bool)  # a trailing channel is accepted
    valid[1, 0, 0] = False

    out = rule.mean_ndvi(_reflectance(RED, NIR), valid, min_valid_fraction=0.75)

    expected = [[sum(_hand_ndvi(t, i, j) for t in range(3)) / 3 for j in range(2)] for i in range(2)]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_mean_ndvi_falls_back_to_valid_observations_per_pixel(caplog: pytest.LogCaptureFixture) -> None:
    valid = np.zeros((3, 2, 2), bool)
    valid[0, 0, 0] = valid[2, 0, 0] = True
    valid[1, 0, 1] = True  # pixel (1, 1) is never valid

    with caplog.at_level(logging.WARNING, logger="s2agri.models.rule"):
        out = rule.mean_ndvi(_reflectance(RED, NIR), valid)

    assert "no frame has >= 95.0% valid pixels" in caplog.text
    np.testing.assert_allclose(out[0, 0], (_hand_ndvi(0, 0, 0) + _hand_ndvi(2, 0, 0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], _hand_ndvi(1, 0, 1), rtol=1e-6)
    assert out[1, 0] == 0.0 and out[1, 1] == 0.0


def test_ndvi_is_zero_without_signal() -> None:
    np.testing.assert_allclose(rule.ndvi(np.array([0.0, 0.3]), np.array([0.0, 0.1])), [0.0, 0.5], rtol=1e-6)


@pytest.mark.parametrize(
    ("reflectance", "valid", "message"),
    [
        (np.zeros((3, 2, 2, 11), np.float32), np.ones((3, 2, 2), bool), "12"),
        (np.zeros((3, 2, 2, 12), np.float32), np.ones((2, 2, 2), bool), "valid has shape"),
        (np.zeros((0, 2, 2, 12), np.float32), np.ones((0, 2, 2), bool), "no frames"),
        (np.full((3, 2, 2, 12), np.nan, np.float32), np.ones((3, 2, 2), bool), "NaN"),
    ],
)
def test_mean_ndvi_rejects_bad_input(reflectance: np.ndarray, valid: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule.mean_ndvi(reflectance, valid)


def test_upsample_bicubic_equals_opencv_inter_cubic() -> None:
    image = np.random.default_rng(1).random((7, 5)).astype(np.float32)

    out = rule.upsample_bicubic(image)

    assert out.shape == (28, 20)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, cv2.resize(image, (20, 28), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_allclose(rule.upsample_bicubic(np.full((3, 3), 0.5)), 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    ("image", "scale"), [(np.zeros((2, 2, 1)), 4), (np.zeros((2, 2)), 0), (np.zeros((2, 2)), 2.0)]
)
def test_upsample_bicubic_rejects_bad_input(image: np.ndarray, scale: object) -> None:
    with pytest.raises(ValueError):
        rule.upsample_bicubic(image, scale)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ndvi_rule_low_exclusive_high_inclusive(dtype: type) -> None:
    low, high = dtype(0.4), dtype(0.6)
    values = np.array(
        [
            low,
            np.nextafter(low, dtype(1)),
            0.5,
            np.nextafter(high, dtype(0)),
            high,
            np.nextafter(high, dtype(1)),
            -1,
            1,
        ],
        dtype=dtype,
    )
    expected = [False, True, True, True, True, False, False, False]
    np.testing.assert_array_equal(rule.ndvi_rule(values), expected)
    np.testing.assert_array_equal(rule.ndvi_rule(values.reshape(2, 4)), np.reshape(expected, (2, 4)))
    with pytest.raises(ValueError, match="below"):
        rule.ndvi_rule(values, low=0.6, high=0.4)


def _rule_patch() -> tuple:
    """A 20 x 20 px, 3-frame patch: left half NDVI 0.5 (cultivated), right half NDVI 0.8."""
    patch = build_eopatch(reference=False)
    red = np.full((3, 20, 20), 0.1, np.float32)
    nir = np.full((3, 20, 20), 0.9, np.float32)  # NDVI 0.8
    nir[:, :, :10] = 0.3  # NDVI 0.5
    patch[REFLECTANCE] = _reflectance(red, nir)
    patch[VALID] = np.ones((3, 20, 20, 1), bool)
    return patch, red, nir


def test_ndvi_rule_task_writes_the_prediction() -> None:
    patch, red, nir = _rule_patch()

    out = NdviRuleTask().execute(patch)

    proba, mask = out[PRED_PROBA], out[PRED_CULTIVATED]
    assert proba.shape == mask.shape == (80, 80, 1)
    assert proba.dtype == np.float32 and mask.dtype == bool
    assert set(np.unique(proba)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, proba == 1.0)
    expected = rule.ndvi_rule(rule.upsample_bicubic(rule.ndvi(nir, red).mean(axis=0)))
    np.testing.assert_array_equal(mask[..., 0], expected)
    assert mask[:, :36].all() and not mask[:, 44:].any()
    assert out.meta_info[PRED_MODEL_KEY] == "ndvi-rule"


def test_write_prediction_thresholds_and_records_the_model() -> None:
    patch = build_eopatch(reference=False)
    proba = np.zeros((80, 80), np.float64)
    proba[0, :4] = [0.2, 0.5, 0.7, 1.0]

    write_prediction(patch, proba, "test-model", threshold=0.5)

    assert patch[PRED_PROBA].dtype == np.float32
    assert patch[PRED_PROBA].shape == (80, 80, 1)
    np.testing.assert_array_equal(patch[PRED_CULTIVATED][0, :4, 0], [False, True, True, True])
    assert patch[PRED_CULTIVATED].sum() == 3
    assert patch.meta_info[PRED_MODEL_KEY] == "test-model"


@pytest.mark.parametrize(
    ("proba", "kwargs", "message"),
    [
        (np.zeros((20, 20), np.float32), {}, "expected \\(80, 80\\)"),
        (np.zeros((80, 80), np.uint8), {}, "dtype uint8"),
        (np.full((80, 80), 1.5, np.float32), {}, "outside \\[0, 1\\]"),
        (np.full((80, 80), np.nan, np.float32), {}, "NaN"),
        (np.zeros((80, 80), np.float32), {"threshold": 0.0}, "threshold"),
        (np.zeros((80, 80), np.float32), {"model_name": ""}, "model_name"),
    ],
)
def test_write_prediction_rejects_bad_input(proba: np.ndarray, kwargs: dict, message: str) -> None:
    arguments = {"model_name": "m", **kwargs}
    with pytest.raises(ValueError, match=message):
        write_prediction(build_eopatch(reference=False), proba, **arguments)

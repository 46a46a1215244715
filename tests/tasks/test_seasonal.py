"""Crop-calendar features: windows, composites, percentiles, context, nodata, the EOTask."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from eolearn.core import EOPatch, FeatureType
from sentinelhub import CRS, BBox

from s2agri.tasks import contract
from s2agri.tasks.masks import REFLECTANCE, VALID
from s2agri.tasks.seasonal import (
    SEASONAL,
    SeasonalFeaturesTask,
    normalised_difference,
    seasonal_features,
    window_of_frames,
)

DATES = ["2019-03-05", "2019-04-20", "2019-05-10", "2019-06-01", "2019-07-15", "2019-08-31", "2019-09-02"]


def test_windows_are_equal_spans_of_the_season() -> None:
    # 1 March .. 1 September 2019 is 184 days: two windows of 92 days, the second from 1 June
    assert window_of_frames(DATES, 2).tolist() == [0, 0, 0, 1, 1, 1, -1]
    assert window_of_frames(["2019-05-31", "2019-06-01"], 2).tolist() == [0, 1]
    assert window_of_frames(["2019-02-28", "2019-03-01"], 1).tolist() == [-1, 0]
    with pytest.raises(ValueError, match="is empty"):
        window_of_frames(DATES, 2, "09-01", "03-01")
    with pytest.raises(ValueError, match="n_windows"):
        window_of_frames(DATES, 0)


def _series(T: int = 4, H: int = 3, W: int = 3) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    reflectance = rng.uniform(0.01, 0.5, (T, H, W, 12)).astype(np.float32)
    valid = np.ones((T, H, W), bool)
    dates = ["2019-03-10", "2019-04-10", "2019-06-10", "2019-07-10"][:T]
    return reflectance, valid, dates


def test_composites_percentiles_and_count_by_hand() -> None:
    reflectance, valid, dates = _series()
    valid[1, 0, 0] = False  # pixel (0, 0): one valid frame in the first window
    features, names = seasonal_features(
        reflectance, valid, dates, n_windows=2, indices=("NDVI",), percentiles=(50.0,), neighbourhood=0
    )
    assert features.shape == (3, 3, 2 * 13 + 1 + 1) and features.dtype == np.float32
    assert names[:2] == ["w0_B01", "w0_B02"] and names[12:14] == ["w0_NDVI", "w1_B01"]
    assert names[-2:] == ["NDVI_p50", "n_valid"]
    # window 0 holds frames 0 and 1, window 1 frames 2 and 3: the median of two values is their mean
    np.testing.assert_allclose(features[1, 1, 3], reflectance[:2, 1, 1, 3].mean(), rtol=1e-6)
    np.testing.assert_allclose(features[1, 1, 13 + 7], reflectance[2:, 1, 1, 7].mean(), rtol=1e-6)
    np.testing.assert_allclose(features[0, 0, 3], reflectance[0, 0, 0, 3], rtol=1e-6)
    ndvi = normalised_difference(reflectance[..., 7], reflectance[..., 3])
    np.testing.assert_allclose(features[1, 1, 12], np.median(ndvi[:2, 1, 1]), rtol=1e-5)
    np.testing.assert_allclose(features[2, 1, 26], np.median(ndvi[:, 2, 1]), rtol=1e-5)
    np.testing.assert_allclose(features[0, 0, 26], np.median(ndvi[[0, 2, 3], 0, 0]), rtol=1e-5)
    assert features[0, 0, 27] == 3 and features[1, 1, 27] == 4


def test_percentiles_match_numpy_linear() -> None:
    reflectance, valid, dates = _series()
    valid[2, 1, 2] = False
    features, names = seasonal_features(
        reflectance, valid, dates, n_windows=1, indices=("NBR",), percentiles=(10.0, 90.0), neighbourhood=0
    )
    nbr = normalised_difference(reflectance[..., 7], reflectance[..., 11])
    series = nbr[[0, 1, 3], 1, 2]
    p10, p90 = names.index("NBR_p10"), names.index("NBR_p90")
    np.testing.assert_allclose(features[1, 2, [p10, p90]], np.percentile(series, [10, 90]), rtol=1e-5)


def test_an_empty_window_is_filled_and_an_unobserved_pixel_is_nan() -> None:
    reflectance, valid, dates = _series()
    valid[2:, 0, 1] = False  # no valid frame in window 1: it takes window 0's value
    valid[:, 2, 2] = False  # never observed
    features, _ = seasonal_features(
        reflectance, valid, dates, n_windows=2, indices=(), percentiles=(), neighbourhood=0
    )
    np.testing.assert_array_equal(features[0, 1, 12:24], features[0, 1, :12])
    assert np.isnan(features[2, 2]).all()
    assert np.isfinite(np.delete(features.reshape(9, -1), 8, axis=0)).all()


def test_neighbourhood_mean_and_std_over_valid_pixels() -> None:
    reflectance, valid, dates = _series(T=1, H=5, W=5)
    valid[0, 0, 0] = False
    features, names = seasonal_features(
        reflectance, valid, dates, n_windows=1, indices=("NDVI",), percentiles=(), neighbourhood=3
    )
    ndvi = normalised_difference(reflectance[0, ..., 7], reflectance[0, ..., 3])
    mean_at, std_at = names.index("w0_NDVI_nbmean"), names.index("w0_NDVI_nbstd")
    window = ndvi[0:3, 0:3].ravel()[1:]  # centre (1, 1): the 3x3 window without the unobserved (0, 0)
    np.testing.assert_allclose(features[1, 1, mean_at], window.mean(), rtol=1e-5)
    np.testing.assert_allclose(features[1, 1, std_at], window.std(), rtol=1e-4, atol=1e-6)
    corner = ndvi[3:5, 3:5].ravel()  # truncated at the border
    np.testing.assert_allclose(features[4, 4, mean_at], corner.mean(), rtol=1e-5)


def test_bad_arguments_are_named() -> None:
    reflectance, valid, dates = _series()
    with pytest.raises(ValueError, match="unknown indices"):
        seasonal_features(reflectance, valid, dates, indices=("EVI",))
    with pytest.raises(ValueError, match="timestamps for 4 frames"):
        seasonal_features(reflectance, valid, dates[:3])
    with pytest.raises(ValueError, match="neighbourhood"):
        seasonal_features(reflectance, valid, dates, neighbourhood=4)
    with pytest.raises(ValueError, match="need bands"):
        seasonal_features(reflectance[..., :4], valid, dates, band_names=("a", "b", "c", "d"))


def test_task_writes_the_feature_and_its_names() -> None:
    reflectance, valid, dates = _series(H=4, W=5)
    patch = EOPatch(
        bbox=BBox((0, 0, 50, 40), CRS.UTM_33N),
        timestamps=[dt.datetime.fromisoformat(d) for d in dates],
    )
    patch[REFLECTANCE] = reflectance
    patch[VALID] = valid[..., None]
    out = SeasonalFeaturesTask(n_windows=3, percentiles=(25.0,), neighbourhood=3).execute(patch)
    names = out.meta_info["SEASONAL_FEATURES"]
    assert out[SEASONAL].shape == (4, 5, len(names)) and out[SEASONAL].dtype == np.float32
    assert len(names) == 3 * 16 + 4 + 1 + 3 * 4 * 2
    assert SEASONAL == (FeatureType.DATA_TIMELESS, "SEASONAL") and len(contract.BAND_NAMES) == 12
    with pytest.raises(ValueError, match="is empty"):
        SeasonalFeaturesTask(season=("09-01", "03-01"))

"""2.5 m prediction of a box with a pixel classifier."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from eolearn.core import EOPatch, FeatureType
from eopatch_factory import build_eopatch

from s2agri.models.baselines import LightGBMPixelClassifier
from s2agri.models.sampling import FeatureUpsampler, SampleSet, sample_box
from s2agri.tasks.predict_pixel import PixelModelPredictTask, predict_proba_map, train_pixel_model
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_MODEL_KEY, PRED_PROBA

SIZE, N_FEATURES = 16, 96
STATS = (FeatureType.DATA_TIMELESS, "STATS5X5")
FAST = {"n_estimators": 60, "num_leaves": 15, "n_jobs": 1}


def smooth_features(size: int, seed: int) -> np.ndarray:
    """(size, size, 96): feature 0 a smooth random field, the rest noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(size // 4, size // 4)).astype(np.float32)
    features = rng.normal(size=(size, size, N_FEATURES)).astype(np.float32)
    features[..., 0] = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return features


def truth_2p5m(features: np.ndarray) -> np.ndarray:
    """Cultivated where the bicubic upsampled feature 0 is positive: a known function of the features."""
    size = features.shape[0]
    return FeatureUpsampler(features[..., :1]).rows(0, size)[..., 0] > 0


@pytest.fixture(scope="module")
def model() -> LightGBMPixelClassifier:
    parts = []
    for box_id in range(6):
        features = smooth_features(SIZE, seed=box_id)
        parts.append(sample_box(features, truth_2p5m(features), n_per_box=1000, box_id=box_id))
    return train_pixel_model("lightgbm", SampleSet.concatenate(parts), **FAST)


def make_patch(seed: int = 100) -> EOPatch:
    patch = build_eopatch(size=SIZE)
    patch[STATS] = smooth_features(SIZE, seed)
    return patch


@pytest.mark.parametrize("mode", ["feature-upsample", "proba-upsample", "refine"])
def test_task_writes_prediction(model, mode: str) -> None:
    patch = PixelModelPredictTask(model, mode=mode).execute(make_patch())
    proba = patch[PRED_PROBA]
    assert proba.shape == (4 * SIZE, 4 * SIZE, 1) and proba.dtype == np.float32
    assert proba.min() >= 0 and proba.max() <= 1
    mask = patch[PRED_CULTIVATED]
    assert mask.dtype == bool and mask.shape == proba.shape
    np.testing.assert_array_equal(mask, proba >= 0.5)
    assert patch.meta_info[PRED_MODEL_KEY] == "lightgbm"
    truth = truth_2p5m(patch[STATS])
    assert np.mean(mask[..., 0] == truth) > (0.95 if mode == "feature-upsample" else 0.9)


def test_threshold_and_name(model) -> None:
    patch = PixelModelPredictTask(model, threshold=0.8, model_name="lgbm-v2").execute(make_patch())
    np.testing.assert_array_equal(patch[PRED_CULTIVATED], patch[PRED_PROBA] >= 0.8)
    assert patch.meta_info[PRED_MODEL_KEY] == "lgbm-v2"


def test_feature_upsample_is_full_resize_in_chunks(model) -> None:
    features = smooth_features(SIZE, 7)
    full = cv2.resize(features, (4 * SIZE, 4 * SIZE), interpolation=cv2.INTER_CUBIC)
    expected = model.predict_proba(full.reshape(-1, N_FEATURES)).reshape(4 * SIZE, 4 * SIZE)
    for chunk in (100, 1000, 10**6):  # strips of 1 row, several rows, the whole box
        np.testing.assert_array_equal(
            predict_proba_map(model, features, "feature-upsample", chunk_pixels=chunk), expected
        )


def test_proba_upsample_is_resized_10m_prediction(model) -> None:
    features = smooth_features(SIZE, 8)
    p10 = model.predict_proba(features.reshape(-1, N_FEATURES)).reshape(SIZE, SIZE)
    expected = np.clip(cv2.resize(p10, (4 * SIZE, 4 * SIZE), interpolation=cv2.INTER_CUBIC), 0, 1)
    np.testing.assert_array_equal(
        predict_proba_map(model, features, "proba-upsample", chunk_pixels=37), expected
    )


def test_refine_predicts_again_only_pixels_near_the_threshold(model) -> None:
    features = smooth_features(SIZE, 10)
    coarse = predict_proba_map(model, features, "proba-upsample")
    fine = predict_proba_map(model, features, "feature-upsample")
    for threshold, margin in ((0.5, 0.3), (0.4, 0.1), (0.6, 0.0)):
        refined = predict_proba_map(
            model, features, "refine", threshold=threshold, margin=margin, chunk_pixels=53
        )
        near = np.abs(coarse - np.float32(threshold)) < margin
        np.testing.assert_array_equal(refined[near], fine[near])
        np.testing.assert_array_equal(refined[~near], coarse[~near])
    # a margin of 1 predicts every pixel again: feature-upsample
    np.testing.assert_array_equal(predict_proba_map(model, features, "refine", margin=1.0), fine)


@pytest.mark.parametrize("mode", ["feature-upsample", "proba-upsample", "refine"])
def test_nan_features(model, mode: str) -> None:
    features = smooth_features(SIZE, 9)
    features[3:6, 3:6] = np.nan  # pixels never observed
    proba = predict_proba_map(model, features, mode)
    assert proba.shape == (4 * SIZE, 4 * SIZE) and np.isfinite(proba).all()


def test_bad_input(model) -> None:
    with pytest.raises(ValueError, match="mode"):
        PixelModelPredictTask(model, mode="nearest")
    with pytest.raises(ValueError, match="predict_proba"):
        PixelModelPredictTask(object())
    with pytest.raises(ValueError, match="no data_timeless/STATS5X5"):
        PixelModelPredictTask(model).execute(build_eopatch(size=SIZE))
    with pytest.raises(ValueError, match="fitted on 96"):
        predict_proba_map(model, np.zeros((SIZE, SIZE, 5), np.float32))
    features = smooth_features(SIZE, 1)
    one_class = sample_box(features, np.zeros((4 * SIZE, 4 * SIZE), bool), n_per_box=50)
    with pytest.raises(ValueError, match="need both"):
        train_pixel_model("lightgbm", one_class)

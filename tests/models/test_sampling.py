"""Training-set sampling: 2.5 m stratified draws, bicubic features, bounded accumulation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from eolearn.core import FeatureType
from eopatch_factory import build_eopatch

from s2agri.models.sampling import (
    FeatureUpsampler,
    SampleAccumulator,
    SampleSet,
    cubic_weights,
    sample_box,
    sample_eopatch,
)
from s2agri.tasks.weights import weight_map

H, W, F = 12, 10, 5


@pytest.fixture
def box() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, F) features, (4H, 4W) cultivated blocks and a NOT_DECLARED strip."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(H, W, F)).astype(np.float32)
    cultivated = np.zeros((4 * H, 4 * W), bool)
    cultivated[4:20, 3:25] = True
    cultivated[30:44, 20:38] = True
    not_declared = np.zeros_like(cultivated)
    not_declared[:, 10:14] = True
    return features, cultivated, not_declared


def test_not_declared_never_sampled(box) -> None:
    features, cultivated, not_declared = box
    for strategy in ("balanced", "proportional"):
        s = sample_box(features, cultivated, not_declared[..., None], n_per_box=10**6, strategy=strategy)
        assert len(s) and not not_declared[s.row, s.col].any()
        np.testing.assert_array_equal(s.y, cultivated[s.row, s.col])
    s = sample_box(features, cultivated, not_declared, n_per_box=10**6, strategy="proportional")
    assert len(s) == np.count_nonzero(~not_declared)  # every eligible pixel once


def test_balanced_and_capped(box) -> None:
    features, cultivated, not_declared = box
    s = sample_box(features, cultivated, not_declared, n_per_box=301, strategy="balanced")
    assert s.class_counts().tolist() == [151, 150]
    scarce = np.zeros_like(cultivated)
    scarce[5, 5:12] = True  # 7 cultivated pixels only
    s = sample_box(features, scarce, None, n_per_box=100)
    assert s.class_counts().tolist() == [50, 7]  # the short class is not topped up


def test_proportional_keeps_ratio(box) -> None:
    features, cultivated, not_declared = box
    eligible = ~not_declared
    s = sample_box(features, cultivated, not_declared, n_per_box=1000, strategy="proportional")
    assert len(s) == 1000
    assert s.y.mean() == pytest.approx(cultivated[eligible].mean(), abs=0.05)


def test_deterministic_per_seed(box) -> None:
    features, cultivated, not_declared = box
    a = sample_box(features, cultivated, not_declared, n_per_box=200, seed=5, box_id=2)
    b = sample_box(features, cultivated, not_declared, n_per_box=200, seed=5, box_id=2)
    c = sample_box(features, cultivated, not_declared, n_per_box=200, seed=6, box_id=2)
    d = sample_box(features, cultivated, not_declared, n_per_box=200, seed=5, box_id=3)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.row * 1000 + a.col, b.row * 1000 + b.col)
    assert not np.array_equal(a.row * 1000 + a.col, c.row * 1000 + c.col)
    assert not np.array_equal(a.row * 1000 + a.col, d.row * 1000 + d.col)
    assert (d.box == 3).all()


def test_weight_map_weights(box) -> None:
    features, cultivated, not_declared = box
    s = sample_box(features, cultivated, not_declared, n_per_box=10**6, weights=True)
    expected = weight_map(cultivated, not_declared)
    np.testing.assert_array_equal(s.weight, expected[s.row, s.col])
    assert (s.weight > 0).all()  # border pixels (weight 0) are not drawn
    assert len(s) == np.count_nonzero(expected > 0)
    ones = sample_box(features, cultivated, not_declared, n_per_box=50)
    assert (ones.weight == 1).all()


def test_bicubic_equals_cv2_resize(box) -> None:
    features = box[0] * 100
    full = cv2.resize(features, (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC)
    rows, cols = np.divmod(np.arange(16 * H * W), 4 * W)
    np.testing.assert_allclose(
        FeatureUpsampler(features).at(rows, cols), full[rows, cols], rtol=1e-5, atol=1e-4
    )
    np.testing.assert_array_equal(FeatureUpsampler(features).rows(3, 7), full[12:28])


def test_bicubic_hand_computed_value(box) -> None:
    """2.5 m pixel (9, 22) sits at 10 m (1.875, 5.125): 4 x 4 taps rows 0..3, cols 4..7."""
    features = box[0] * 100
    r, c = 9, 22
    wy = cubic_weights(np.array([0.875]))[0].astype(np.float64)
    wx = cubic_weights(np.array([0.125]))[0].astype(np.float64)
    a = (
        -0.75
    )  # OpenCV's kernel: |x| <= 1: (a+2)|x|^3 - (a+3)|x|^2 + 1; 1 < |x| < 2: a|x|^3 - 5a|x|^2 + 8a|x| - 4a

    def kernel(x: float) -> float:
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    np.testing.assert_allclose(wy, [kernel(1.875), kernel(0.875), kernel(0.125), kernel(1.125)], rtol=1e-6)
    np.testing.assert_allclose(wx, [kernel(1.125), kernel(0.125), kernel(0.875), kernel(1.875)], rtol=1e-6)
    hand = np.einsum("i,j,ijf->f", wy, wx, features[0:4, 4:8].astype(np.float64))
    full = cv2.resize(features, (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(full[r, c], hand, rtol=1e-5)
    np.testing.assert_allclose(FeatureUpsampler(features).at([r], [c])[0], hand, rtol=1e-5)
    # at the top-left corner the taps are replicated: pixel (0, 0) sits at (-0.375, -0.375)
    corner = np.einsum(
        "i,j,ijf->f",
        cubic_weights(np.array([0.625]))[0],
        cubic_weights(np.array([0.625]))[0],
        features[np.ix_([0, 0, 0, 1], [0, 0, 0, 1])].astype(np.float64),
    )
    np.testing.assert_allclose(FeatureUpsampler(features).at([0], [0])[0], corner, rtol=1e-5)


def test_nearest_interpolation(box) -> None:
    features, cultivated, not_declared = box
    s = sample_box(features, cultivated, not_declared, n_per_box=100, interpolation="nearest")
    np.testing.assert_array_equal(s.X, features[s.row // 4, s.col // 4])


def test_nan_features_stay_local(box) -> None:
    features = box[0].copy()
    features[5, 5, 1] = np.nan
    features[:, :, 3] = np.nan  # a feature missing everywhere
    up = FeatureUpsampler(features)
    full = up.rows(0, H)
    nan = np.isnan(full)
    expected = np.zeros_like(nan)
    expected[20:24, 20:24, 1] = True
    expected[..., 3] = True
    np.testing.assert_array_equal(nan, expected)
    rows, cols = np.divmod(np.arange(16 * H * W), 4 * W)
    np.testing.assert_allclose(up.at(rows, cols), full[rows, cols], rtol=1e-5, atol=1e-5)
    # the neighbours of the NaN pixel use the feature's median, not NaN
    filled = features[..., 1].copy()
    filled[5, 5] = np.nanmedian(features[..., 1])
    ref = cv2.resize(filled, (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(full[19, 19, 1], ref[19, 19], rtol=1e-5)


def test_bad_input(box) -> None:
    features, cultivated, not_declared = box
    with pytest.raises(ValueError, match="cultivated must have shape"):
        sample_box(features, cultivated[:-1])
    with pytest.raises(ValueError, match="not_declared must have shape"):
        sample_box(features, cultivated, not_declared[:, :-4])
    labels = cultivated.astype(np.float32)
    labels[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN labels"):
        sample_box(features, labels)
    with pytest.raises(ValueError, match="strategy"):
        sample_box(features, cultivated, strategy="random")
    with pytest.raises(ValueError, match="n_per_box"):
        sample_box(features, cultivated, n_per_box=0)
    with pytest.raises(ValueError, match=r"shape \(H, W, F\)"):
        sample_box(features[..., 0], cultivated)
    with pytest.raises(ValueError, match="outside"):
        FeatureUpsampler(features).at([4 * H], [0])


def test_sample_eopatch() -> None:
    patch = build_eopatch(size=8)
    rng = np.random.default_rng(1)
    patch[(FeatureType.DATA_TIMELESS, "STATS5X5")] = rng.random((8, 8, 4)).astype(np.float32)
    patch.meta_info["STATS5X5_FEATURES"] = ["a", "b", "c", "d"]
    cultivated = np.zeros((32, 32, 1), bool)
    cultivated[8:20, 8:20] = True
    patch[(FeatureType.MASK_TIMELESS, "CULTIVATED")] = cultivated
    s = sample_eopatch(patch, n_per_box=40, box_id=7)
    assert s.feature_names == ("a", "b", "c", "d")
    assert s.class_counts().tolist() == [20, 20] and (s.box == 7).all()


def _fake_box(box_id: int, n: int, n_features: int = 3) -> SampleSet:
    y = (np.arange(n) % 4 == 0).astype(np.uint8)  # 25 % cultivated
    return SampleSet(
        X=np.full((n, n_features), box_id, np.float32),
        y=y,
        weight=np.ones(n, np.float32),
        box=np.full(n, box_id, np.int32),
        row=np.arange(n, dtype=np.int32),
        col=np.zeros(n, np.int32),
    )


def test_accumulator_memory_bound_and_balance() -> None:
    acc = SampleAccumulator(max_samples=1000, strategy="balanced", seed=0)
    sizes = []
    for box_id in range(300):
        acc.add(_fake_box(box_id, 400))
        sizes.append(acc.nbytes)
    per_sample = 3 * 4 + 1 + 4 + 3 * 4 + 8  # X, y, weight, box/row/col, key
    assert max(sizes) <= 1000 * per_sample and sizes[-1] == sizes[20]  # bounded, not growing
    result = acc.result()
    assert len(acc) == len(result) == 1000 and acc.n_seen == 300 * 400
    assert result.class_counts().tolist() == [500, 500]
    # a uniform subset: the mean box id of each class is near that of all boxes (149.5, sd ~3.9)
    for cls in (0, 1):
        assert abs(result.box[result.y == cls].mean() - 149.5) < 20
    assert len(np.unique(result.box)) > 200
    np.testing.assert_array_equal(result.X[:, 0], result.box)  # rows stay consistent
    assert (np.diff(result.box) >= 0).all()


def test_accumulator_deterministic_and_small_input() -> None:
    def run(seed: int) -> SampleSet:
        acc = SampleAccumulator(max_samples=100, strategy="proportional", seed=seed)
        for box_id in range(20):
            acc.add(_fake_box(box_id, 50))
        return acc.result()

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a.box * 1000 + a.row, b.box * 1000 + b.row)
    assert not np.array_equal(a.box * 1000 + a.row, c.box * 1000 + c.row)
    assert len(a) == 100 and a.y.mean() == pytest.approx(0.25, abs=0.15)

    acc = SampleAccumulator(max_samples=1000)
    acc.add(_fake_box(0, 40))
    acc.add(_fake_box(1, 40))
    assert len(acc.result()) == 80  # below the cap everything is kept
    with pytest.raises(ValueError, match="features"):
        acc.add(_fake_box(2, 10, n_features=4))
    with pytest.raises(ValueError, match="max_samples"):
        SampleAccumulator(0)

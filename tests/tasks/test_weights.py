"""The vectorised weight map against the spec's fixtures and the starter-pack reference loop."""

from __future__ import annotations

import numpy as np
import pytest
from eolearn.core import EOPatch, FeatureType
from scipy.ndimage import gaussian_filter
from sentinelhub import CRS, BBox

from s2agri.tasks import contract
from s2agri.tasks.weights import WeightMapTask, parcel_weight, reference_weight_map, weight_map

SPEC_FIXTURE = {
    1: 1.43988, 5: 1.67826, 10: 1.89512, 20: 2.00000, 30: 1.98104, 35: 1.96628, 50: 1.90954,
    100: 1.63188, 150: 1.34188, 200: 1.14406, 300: 1.01208, 399: 1.00039, 400: 1.0, 1000: 1.0,
}  # fmt: skip


def blobs(shape: tuple[int, int], seed: int, sigma: float, fraction: float) -> np.ndarray:
    """Parcel-like blobs: smoothed noise above its ``1 - fraction`` quantile."""
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return noise > np.quantile(noise, 1 - fraction)


def make_eopatch(size: int) -> EOPatch:
    extent = size * contract.TARGET_RESOLUTION_M
    return EOPatch(
        bbox=BBox((500000, 5100000, 500000 + extent, 5100000 + extent), CRS(contract.CHALLENGE_CRS_EPSG))
    )


def assert_same_as_reference(mask: np.ndarray, not_declared: np.ndarray | None = None) -> np.ndarray:
    fast = weight_map(mask, not_declared)
    slow = reference_weight_map(mask, not_declared)
    assert fast.dtype == np.float32 and fast.shape == mask.shape[:2]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
    return fast


def test_parcel_weight_matches_spec_fixture() -> None:
    ns = np.array(list(SPEC_FIXTURE))
    np.testing.assert_allclose(parcel_weight(ns), list(SPEC_FIXTURE.values()), atol=1e-5)
    for n, expected in SPEC_FIXTURE.items():
        assert parcel_weight(n) == pytest.approx(expected, abs=1e-5)


def test_parcel_weight_guards() -> None:
    assert parcel_weight(0) == 0.0
    assert parcel_weight(np.array([0, 1])).tolist() == [0.0, pytest.approx(1.43988, abs=1e-5)]
    assert parcel_weight(10.7) == parcel_weight(10)  # int(n) truncates
    assert parcel_weight(10**9) == 1.0
    with pytest.raises(ValueError):
        parcel_weight(-1)
    with pytest.raises(ValueError):
        parcel_weight(np.array([3.0, np.nan]))


def test_single_parcel_by_hand() -> None:
    mask = np.zeros((12, 12), dtype=bool)
    mask[4:7, 4:7] = True
    weights = assert_same_as_reference(mask)
    w = np.float32(parcel_weight(9))
    assert np.all(weights[4:7, 4:7] == w)
    rows, cols = np.indices(mask.shape)
    d_row = np.maximum(np.abs(rows - 5) - 1, 0)  # distance along each axis to the 3x3 square
    d_col = np.maximum(np.abs(cols - 5) - 1, 0)
    ring = (d_row**2 + d_col**2 <= 4) & ~mask  # within disk(2) of the square, outside it
    assert np.count_nonzero(ring) == 49 - 9 - 4 * 3  # 7x7 box minus square minus cut corners
    assert np.allclose(weights[ring], 2 * w)
    border = np.zeros_like(mask)
    border[0, :] = border[:, 0] = True
    border[-2:, :] = border[:, -2:] = True
    assert np.all(weights[border] == 0)
    rest = ~(mask | ring | border)
    assert np.all(weights[rest] == 1)


def test_overlapping_rings_average_and_parcels_win() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:8, 5:8] = True  # A: 9 px
    mask[5:7, 10:12] = True  # B: 4 px, its ring overlaps A's in columns 8..9
    mask[8, 9] = True  # C: 1 px
    mask[9, 7] = True  # D: 1 px, on A's ring
    weights = assert_same_as_reference(mask)
    w9, w4, w1 = (np.float32(parcel_weight(n)) for n in (9, 4, 1))
    assert weights[5, 9] == pytest.approx((2 * w9 + 2 * w4) / 2, abs=1e-6)
    assert weights[7, 9] == pytest.approx((2 * w9 + 2 * w4 + 2 * w1) / 3, abs=1e-6)
    assert weights[9, 7] == w1  # a parcel pixel on another parcel's ring keeps its own weight
    assert weights[8, 7] == pytest.approx((2 * w9 + 4 * w1) / 3, abs=1e-6)  # rings of A, C and D


@pytest.mark.parametrize(
    ("shape", "seed", "sigma", "fraction"),
    [((64, 64), 0, 1.5, 0.4), ((64, 64), 1, 1.0, 0.6), ((64, 80), 2, 2.5, 0.3), ((200, 200), 3, 2.0, 0.45)],
)
@pytest.mark.parametrize("with_not_declared", [False, True])
def test_random_blobs_match_reference(shape, seed, sigma, fraction, with_not_declared) -> None:
    mask = blobs(shape, seed, sigma, fraction)
    nd = blobs(shape, seed + 100, 3.0, 0.1) if with_not_declared else None
    weights = assert_same_as_reference(mask, nd)
    if nd is not None:
        assert np.all(weights[nd] == 0)


def test_salt_and_pepper_touching_parcels_match_reference() -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((60, 70)) < 0.35  # many single pixels and diagonal-touching parcels
    assert_same_as_reference(mask)
    assert_same_as_reference(mask, rng.random((60, 70)) < 0.1)


def test_small_maps_match_reference() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):  # small maps: the background component has < 400 px too
        shape = tuple(rng.integers(3, 25, size=2))
        mask = rng.random(shape) < rng.uniform(0.1, 0.9)
        assert_same_as_reference(mask, rng.random(shape) < 0.1)


def test_borders_and_corners_match_reference() -> None:
    mask = np.zeros((16, 16), dtype=bool)
    mask[0, 0] = mask[15, 15] = mask[0, 15] = mask[15, 0] = True  # corners
    mask[7:9, 0:2] = True  # on the left border
    mask[14:16, 6:9] = True  # on the bottom border
    mask[1, 10] = True  # next to the top border
    assert_same_as_reference(mask)
    assert_same_as_reference(mask[:, :, None])  # (H, W, 1) masks too


@pytest.mark.parametrize("fill", [False, True])
def test_uniform_masks(fill: bool) -> None:
    mask = np.full((30, 40), fill)
    weights = assert_same_as_reference(mask)
    interior = weights[1:-2, 1:-2]
    assert np.all(interior == 1)  # one huge parcel (weight 1) or pure background (1)
    assert weights[0].sum() == weights[:, 0].sum() == weights[-2:].sum() == weights[:, -2:].sum() == 0


def test_all_not_declared_is_zero() -> None:
    mask = blobs((40, 40), 5, 1.5, 0.5)
    assert not weight_map(mask, np.ones_like(mask)).any()


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        weight_map(np.zeros((10, 10), bool), np.zeros((10, 11), bool))
    with pytest.raises(ValueError):
        weight_map(np.zeros((2, 10, 10), bool))


def test_weight_map_task_adds_feature() -> None:
    mask = blobs((48, 48), 11, 1.5, 0.4)
    nd = np.zeros_like(mask)
    nd[10:20, 10:20] = True
    eopatch = make_eopatch(48)
    eopatch[contract.CULTIVATED] = mask[..., None]
    eopatch[contract.NOT_DECLARED] = nd[..., None]
    result = WeightMapTask().execute(eopatch)
    output = result[(FeatureType.DATA_TIMELESS, "WEIGHTS")]
    assert output.shape == (48, 48, 1) and output.dtype == np.float32
    np.testing.assert_array_equal(output[..., 0], reference_weight_map(mask, nd))


def test_weight_map_task_without_not_declared() -> None:
    mask = blobs((32, 32), 12, 1.5, 0.4)
    eopatch = make_eopatch(32)
    eopatch[contract.CULTIVATED] = mask[..., None]
    task = WeightMapTask(output_feature=(FeatureType.DATA_TIMELESS, "W"))
    output = task.execute(eopatch)[(FeatureType.DATA_TIMELESS, "W")]
    np.testing.assert_array_equal(output[..., 0], weight_map(mask))

"""Frame selection, percentile normalisation, tensor stacks and targets (s2agri.tasks.tensors)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from eolearn.core import EOWorkflow, FeatureType, OutputTask, linearly_connect_tasks
from eopatch_factory import build_eopatch

from s2agri.tasks import contract
from s2agri.tasks.masks import REFLECTANCE, VALID, ReflectanceTask, ValidMaskTask
from s2agri.tasks.tensors import (
    STACK,
    FrameSelectionTask,
    PercentileNormaliser,
    TensorStackTask,
    select_frames,
    targets,
)
from s2agri.tasks.weights import weight_map

# Valid fractions of the 6 hand-made frames: 0.5, 0.75, 0.25, 0.75, 1.0, 0.0 (2 x 2 px each).
FRACTIONS = (0.5, 0.75, 0.25, 0.75, 1.0, 0.0)


def _valid_masks() -> np.ndarray:
    valid = np.zeros((len(FRACTIONS), 2, 2, 1), bool)
    for t, fraction in enumerate(FRACTIONS):
        valid[t].reshape(-1)[: round(fraction * 4)] = True
    return valid


def _patch_with_valid() -> object:
    patch = build_eopatch(frames=len(FRACTIONS), size=2)
    frames = np.arange(len(FRACTIONS), dtype=np.uint16)
    patch[contract.BANDS] = np.broadcast_to(frames[:, None, None, None], patch[contract.BANDS].shape).copy()
    patch[VALID] = _valid_masks()
    return patch


@pytest.mark.parametrize(
    ("n_frames", "expected"),
    [
        (1, [4]),
        (2, [1, 4]),  # frames 1 and 3 tie at 0.75: the earlier one wins
        (3, [1, 3, 4]),
        (4, [0, 1, 3, 4]),
        (6, [0, 1, 2, 3, 4, 5]),
        (10, [0, 1, 2, 3, 4, 5]),  # fewer frames than asked: all kept
        (None, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_select_frames_keeps_the_least_cloudy_in_time_order(
    n_frames: int | None, expected: list[int]
) -> None:
    assert select_frames(_valid_masks(), n_frames).tolist() == expected


def test_frame_selection_task_filters_every_temporal_feature_and_timestamps() -> None:
    patch = _patch_with_valid()
    timestamps = list(patch.timestamps)

    out = FrameSelectionTask(3).execute(patch)

    assert out.timestamps == [timestamps[i] for i in (1, 3, 4)]
    np.testing.assert_array_equal(out[contract.BANDS][:, 0, 0, 0], [1, 3, 4])
    np.testing.assert_array_equal(out[VALID], _valid_masks()[[1, 3, 4]])
    np.testing.assert_array_equal(out[contract.NORM_FACTORS], patch[contract.NORM_FACTORS][[1, 3, 4]])
    np.testing.assert_array_equal(out[contract.CULTIVATED], patch[contract.CULTIVATED])
    assert out.bbox == patch.bbox


def test_frame_selection_task_none_keeps_all_frames_and_honours_filter_features() -> None:
    patch = _patch_with_valid()
    out = FrameSelectionTask(None).execute(patch)
    assert len(out.timestamps) == len(FRACTIONS)
    np.testing.assert_array_equal(out[contract.BANDS], patch[contract.BANDS])

    only = FrameSelectionTask(2, filter_features=[contract.BANDS]).execute(patch)
    assert set(only.get_features()) == {contract.BANDS}
    np.testing.assert_array_equal(only[contract.BANDS][:, 0, 0, 0], [1, 4])


def test_frame_selection_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n_frames=0"):
        FrameSelectionTask(0)
    with pytest.raises(ValueError, match="n_frames=True"):
        FrameSelectionTask(True)
    with pytest.raises(ValueError, match="ValidMaskTask"):
        FrameSelectionTask(2).execute(build_eopatch())
    with pytest.raises(ValueError, match="no frames"):
        select_frames(np.zeros((0, 2, 2, 1), bool), 2)


def _pairs(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two small 'boxes' of reflectance (T, H, W, 4) with invalid observations set to huge values."""
    rng = np.random.default_rng(seed)
    pairs = []
    for shape in ((3, 5, 5, 4), (2, 6, 7, 4)):
        values = rng.normal(0.2, 0.1, shape).astype(np.float32)
        valid = rng.random((*shape[:-1], 1)) < 0.7
        values[~valid[..., 0]] = 1e6  # must not count
        pairs.append((values, valid))
    return pairs


def test_percentiles_equal_numpys_over_valid_observations() -> None:
    pairs = _pairs()
    everything = np.concatenate([values[valid[..., 0]] for values, valid in pairs])

    normaliser = PercentileNormaliser().fit(pairs)

    expected = np.percentile(everything, [3, 97], axis=0)
    np.testing.assert_array_equal(normaliser.low, expected[0].astype(np.float32))
    np.testing.assert_array_equal(normaliser.high, expected[1].astype(np.float32))
    assert normaliser.n_seen == len(everything)
    assert normaliser.high.max() < 1  # the 1e6 of invalid observations were ignored

    other = PercentileNormaliser(10, 90).fit(pairs)
    np.testing.assert_array_equal(other.low, np.percentile(everything, 10, axis=0).astype(np.float32))


def test_percentiles_accept_masks_without_channel_axis_and_frame_by_frame_pairs() -> None:
    values, valid = _pairs()[0]
    whole = PercentileNormaliser().fit([(values, valid[..., 0])])
    frames = PercentileNormaliser().fit((values[t], valid[t]) for t in range(values.shape[0]))
    np.testing.assert_array_equal(whole.low, frames.low)
    np.testing.assert_array_equal(whole.high, frames.high)


def test_subsampled_percentiles_are_seeded_and_close() -> None:
    rng = np.random.default_rng(1)
    values = rng.random((40, 50, 50, 2), dtype=np.float32)  # uniform: percentiles 0.03 and 0.97
    valid = np.ones((40, 50, 50), bool)
    pairs = [(values[:20], valid[:20]), (values[20:], valid[20:])]

    first = PercentileNormaliser(max_values=20000, seed=3).fit(pairs)
    again = PercentileNormaliser(max_values=20000, seed=3).fit(pairs)
    other = PercentileNormaliser(max_values=20000, seed=4).fit(pairs)

    assert first.n_seen == values.shape[0] * 50 * 50
    np.testing.assert_array_equal(first.low, again.low)
    np.testing.assert_array_equal(first.high, again.high)
    assert not np.array_equal(first.low, other.low)
    np.testing.assert_allclose(first.low, 0.03, atol=0.005)
    np.testing.assert_allclose(first.high, 0.97, atol=0.005)


def test_apply_normalises_and_clips_to_unit_interval() -> None:
    normaliser = PercentileNormaliser(low=[0.0, 1.0], high=[2.0, 3.0])
    values = np.array([[-1.0, 1.0], [1.0, 2.0], [3.0, 4.0], [0.5, 2.5]])

    out = normaliser.apply(values)

    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0], [0.5, 0.5], [1, 1], [0.25, 0.75]])


def test_constant_channel_gets_a_unit_span() -> None:
    normaliser = PercentileNormaliser(low=[0.5, 0.0], high=[0.5, 1.0])
    np.testing.assert_array_equal(
        normaliser.apply(np.array([[0.25, 0.5], [0.75, 0.5]])), [[0, 0.5], [0.25, 0.5]]
    )


def test_to_dict_round_trips_through_a_weights_only_checkpoint() -> None:
    normaliser = PercentileNormaliser(max_values=50, seed=7).fit(_pairs())
    state = normaliser.to_dict()
    assert all(type(v) is float for v in state["low"] + state["high"])

    buffer = io.BytesIO()
    torch.save({"normaliser": state, "weights": torch.zeros(2)}, buffer)
    buffer.seek(0)
    loaded = PercentileNormaliser.from_dict(torch.load(buffer, weights_only=True)["normaliser"])

    np.testing.assert_array_equal(loaded.low, normaliser.low)
    np.testing.assert_array_equal(loaded.high, normaliser.high)
    assert (loaded.q_low, loaded.q_high, loaded.max_values, loaded.seed) == (3.0, 97.0, 50, 7)
    values = _pairs(1)[0][0]
    np.testing.assert_array_equal(loaded.apply(values), normaliser.apply(values))


def test_normaliser_rejects_bad_use() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        PercentileNormaliser().apply(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not fitted"):
        PercentileNormaliser().to_dict()
    with pytest.raises(ValueError, match="no valid observation"):
        PercentileNormaliser().fit([(np.ones((2, 3, 3, 4)), np.zeros((2, 3, 3, 1), bool))])
    with pytest.raises(ValueError, match="expected 2 channels"):
        PercentileNormaliser(low=[0, 0], high=[1, 1]).apply(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="q_low < q_high"):
        PercentileNormaliser(97, 3)
    with pytest.raises(ValueError, match="lacks"):
        PercentileNormaliser.from_dict({"low": [0.0]})
    with pytest.raises(ValueError, match="NaN"):
        PercentileNormaliser().fit([(np.full((1, 2, 2, 1), np.nan), np.ones((1, 2, 2), bool))])


def test_tensor_stack_zeroes_invalid_observations() -> None:
    patch = build_eopatch(frames=3, size=4)
    rng = np.random.default_rng(0)
    reflectance = rng.random((3, 4, 4, 12), dtype=np.float32)
    valid = rng.random((3, 4, 4, 1)) < 0.5
    patch[REFLECTANCE] = reflectance
    patch[VALID] = valid
    normaliser = PercentileNormaliser(low=[0.2] * 12, high=[0.7] * 12)

    stack = TensorStackTask(normaliser).execute(patch)[STACK]

    assert stack.dtype == np.float32 and stack.shape == (3, 4, 4, 12)
    expected = np.clip((reflectance - np.float32(0.2)) / (np.float32(0.7) - np.float32(0.2)), 0, 1)
    np.testing.assert_array_equal(
        stack[np.broadcast_to(valid, stack.shape)], expected[np.broadcast_to(valid, stack.shape)]
    )
    assert not stack[np.broadcast_to(~valid, stack.shape)].any()
    assert stack.min() >= 0 and stack.max() <= 1


def test_tensor_stack_rejects_missing_features_and_unfitted_normaliser() -> None:
    with pytest.raises(ValueError, match="fitted"):
        TensorStackTask(PercentileNormaliser())
    with pytest.raises(ValueError, match="ReflectanceTask"):
        TensorStackTask(PercentileNormaliser(low=[0.0] * 12, high=[1.0] * 12)).execute(build_eopatch())


def test_tasks_chain_in_an_eo_workflow() -> None:
    patch = build_eopatch(frames=4, size=6)
    rng = np.random.default_rng(2)
    patch[contract.BANDS] = rng.integers(0, 6000, patch[contract.BANDS].shape, dtype=np.uint16)
    clm = np.zeros((4, 6, 6, 1), np.uint8)
    clm[0, :3] = 1  # frame 0: half cloudy, frame 2: all cloudy
    clm[2] = 1
    patch[contract.CLM] = clm
    patch[contract.IS_DATA][:] = True
    normaliser = PercentileNormaliser(low=[0.05] * 12, high=[0.5] * 12)
    tasks = [ReflectanceTask(), ValidMaskTask(), FrameSelectionTask(2), TensorStackTask(normaliser)]
    nodes = linearly_connect_tasks(*tasks, OutputTask("out"))

    result = EOWorkflow(nodes).execute({nodes[0]: {"eopatch": patch}}).outputs["out"]

    assert result.timestamps == [patch.timestamps[1], patch.timestamps[3]]
    reflectance = patch[contract.BANDS][[1, 3]].astype(np.float32) * np.float32(contract.NORM_FACTOR)
    np.testing.assert_array_equal(result[STACK], normaliser.apply(reflectance))
    assert result[STACK].shape == (2, 6, 6, 12)


def _reference_patch() -> object:
    patch = build_eopatch(frames=2, size=10)
    rng = np.random.default_rng(5)
    cultivated = np.zeros((40, 40, 1), bool)
    cultivated[5:20, 4:30] = True
    cultivated[25:28, 25:28] = True
    not_declared = np.zeros_like(cultivated)
    not_declared[30:36, 2:12] = True
    not_declared[10:12, 10:12] = True  # inside a parcel too
    cultivated[10:12, 10:12] = False
    patch[contract.CULTIVATED] = cultivated
    patch[contract.NOT_DECLARED] = not_declared
    patch[(FeatureType.MASK_TIMELESS, "NOISE")] = rng.random((40, 40, 1)) < 0.5
    return patch


def test_targets_challenge_weights_zero_on_not_declared() -> None:
    patch = _reference_patch()
    cultivated = patch[contract.CULTIVATED][..., 0]
    not_declared = patch[contract.NOT_DECLARED][..., 0]

    y, weight = targets(patch)

    assert y.dtype == np.float32 and weight.dtype == np.float32 and y.shape == weight.shape == (40, 40)
    np.testing.assert_array_equal(y, cultivated.astype(np.float32))
    np.testing.assert_array_equal(weight, weight_map(cultivated, not_declared))
    assert not weight[not_declared].any()
    assert (weight[~not_declared][5:-5] > 0).any()
    assert weight.max() > 1  # the small parcel weighs more


def test_targets_uniform_weights_zero_only_on_not_declared() -> None:
    patch = _reference_patch()
    not_declared = patch[contract.NOT_DECLARED][..., 0]

    y, weight = targets(patch, "none")

    np.testing.assert_array_equal(weight, (~not_declared).astype(np.float32))
    np.testing.assert_array_equal(y, patch[contract.CULTIVATED][..., 0])


def test_targets_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="weights='ones'"):
        targets(_reference_patch(), "ones")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CULTIVATED"):
        targets(build_eopatch(reference=False))

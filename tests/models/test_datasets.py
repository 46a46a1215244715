"""Training patches, the box cache, batch sampling and box splits (s2agri.models.datasets)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from eolearn.core import EOPatch
from eopatch_factory import build_eopatch
from torch.utils.data import DataLoader

from s2agri.models.box_inputs import box_observations, load_box, prepared_box_nbytes, read_box_shape
from s2agri.models.datasets import BoxBatchSampler, PatchDataset, patch_starts, split_boxes
from s2agri.tasks import contract
from s2agri.tasks.delineation import delineation_targets
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask
from s2agri.tasks.tensors import STACK, FrameSelectionTask, PercentileNormaliser, TensorStackTask, targets
from s2agri.workflows.simulate import simulate_region

SIZE = 40  #: simulated boxes: 40 x 40 px at 10 m, 8..12 frames
PATCH = 64  #: 2.5 m pixels: 16 x 16 input pixels, starts 0, 16, 24 -> 9 patches per box


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("simulated") / "region"
    logging.getLogger("s2agri").setLevel(logging.WARNING)
    simulate_region(out, boxes=3, size=SIZE, seed=0, frames_min=8, frames_max=12)
    return sorted((out / "eopatches").iterdir())


@pytest.fixture(scope="module")
def normaliser(boxes: list[Path]) -> PercentileNormaliser:
    return PercentileNormaliser().fit(box_observations(boxes))


def _pipeline(box: Path, normaliser: PercentileNormaliser, n_frames: int | None) -> EOPatch:
    """The whole-box task pipeline the dataset must reproduce patch by patch."""
    patch = EOPatch.load(str(box))
    for task in (
        ReflectanceTask(),
        ValidMaskTask(),
        FrameSelectionTask(n_frames),
        TensorStackTask(normaliser),
    ):
        patch = task.execute(patch)
    return patch


def _asymmetric_box(folder: Path, name: str, size: int = 24, frames: int = 3, seed: int = 0) -> Path:
    """A box whose bands and CULTIVATED follow the same random 10 m pattern (no symmetry)."""
    rng = np.random.default_rng(seed)
    patch = build_eopatch(frames=frames, size=size)
    pattern = rng.random((size, size)) < 0.5
    bands = np.where(pattern[None, :, :, None], 4000, 500).astype(np.uint16)
    patch[contract.BANDS] = np.broadcast_to(bands, patch[contract.BANDS].shape).copy()
    patch[contract.IS_DATA][:] = True
    patch[contract.CULTIVATED] = np.kron(pattern, np.ones((4, 4), bool))[..., None]
    not_declared = np.zeros((4 * size, 4 * size, 1), bool)
    not_declared[8:20, 40:44] = True
    patch[contract.NOT_DECLARED] = not_declared
    path = folder / name
    patch.save(str(path))
    return path


UNIT = PercentileNormaliser(low=[0.1] * 12, high=[0.3] * 12)  # 500 DN -> 0, 4000 DN -> 1 (clipped)


def test_patch_starts_tile_without_overlap_but_the_shifted_last() -> None:
    assert patch_starts(40, 16) == [0, 16, 24]
    assert patch_starts(40, 20) == [0, 20]
    assert patch_starts(16, 16) == [0]
    with pytest.raises(ValueError, match="does not fit"):
        patch_starts(10, 16)


def test_box_shape_is_read_from_the_header(boxes: list[Path]) -> None:
    for box in boxes:
        assert read_box_shape(box) == EOPatch.load(str(box), features=[contract.BANDS])[contract.BANDS].shape


def test_dataset_size_shapes_and_dtypes(boxes: list[Path], normaliser: PercentileNormaliser) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, n_frames=None, augment=False)
    assert len(dataset) == 3 * 9
    assert dataset.input_size == 16
    for index in (0, 13, 26):
        item = dataset[index]
        frames = dataset.box_shapes[dataset.patch_origin(index)[0]][0]
        assert set(item) == {"x", "y", "weight", "box"}
        assert item["x"].dtype == item["y"].dtype == item["weight"].dtype == torch.float32
        assert item["x"].shape == (frames, 12, 16, 16)
        assert item["y"].shape == item["weight"].shape == (1, 64, 64)
        assert item["box"] == str(boxes[dataset.patch_origin(index)[0]])
        assert item["x"].min() >= 0 and item["x"].max() <= 1
    assert dataset[-1]["box"] == str(boxes[-1])
    with pytest.raises(IndexError):
        dataset[27]


@pytest.mark.parametrize("n_frames", [None, 5])
def test_items_are_crops_of_the_whole_box_pipeline(
    boxes: list[Path], normaliser: PercentileNormaliser, n_frames: int | None
) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, n_frames=n_frames, augment=False)
    for b, box in enumerate(boxes):
        whole = _pipeline(box, normaliser, n_frames)
        stack = whole[STACK].transpose(0, 3, 1, 2)
        y, weight = targets(whole)
        for index in dataset.box_indices(b):
            _, row, col = dataset.patch_origin(index)
            item = dataset[index]
            np.testing.assert_array_equal(item["x"].numpy(), stack[:, :, row : row + 16, col : col + 16])
            big = (slice(4 * row, 4 * row + 64), slice(4 * col, 4 * col + 64))
            np.testing.assert_array_equal(item["y"][0].numpy(), y[big])
            np.testing.assert_array_equal(item["weight"][0].numpy(), weight[big])
            cultivated = whole[contract.CULTIVATED][big][..., 0]
            np.testing.assert_array_equal(item["y"][0].numpy(), cultivated)
            assert not item["weight"][0].numpy()[whole[contract.NOT_DECLARED][big][..., 0]].any()


def test_short_boxes_are_padded_with_zero_frames_at_the_end(
    boxes: list[Path], normaliser: PercentileNormaliser
) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, n_frames=20, augment=False)
    for b in range(3):
        frames = dataset.box_shapes[b][0]
        assert frames < 20
        item = dataset[dataset.box_indices(b)[0]]
        stack = _pipeline(boxes[b], normaliser, None)[STACK]
        assert item["x"].shape == (20, 12, 16, 16)
        np.testing.assert_array_equal(item["x"][:frames].numpy(), stack[:, :16, :16].transpose(0, 3, 1, 2))
        assert not item["x"][frames:].any()
    batch = next(iter(DataLoader(dataset, batch_size=27)))  # constant T: any batch collates
    assert batch["x"].shape == (27, 20, 12, 16, 16)


def _dihedral(array: np.ndarray, rotations: int, flip: bool) -> np.ndarray:
    out = np.rot90(array, rotations, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def test_augmentation_keeps_x_and_y_aligned(tmp_path: Path) -> None:
    box = _asymmetric_box(tmp_path, "asym")
    plain = PatchDataset([box], UNIT, patch_size=32, augment=False)
    augmented = PatchDataset([box], UNIT, patch_size=32, augment=True, seed=1)
    seen = set()
    for epoch in range(3):
        augmented.set_epoch(epoch)
        for index in range(len(plain)):
            reference, item = plain[index], augmented[index]
            x, y, weight = item["x"].numpy(), item["y"][0].numpy(), item["weight"][0].numpy()
            # the bands pattern is the CULTIVATED pattern: y is x's 10 m pixels repeated 4 x 4
            np.testing.assert_array_equal(y, np.kron(x[0, 0] > 0.5, np.ones((4, 4))))
            assert set(np.unique(x)) <= {0.0, 1.0}
            matches = [
                (k, flip)
                for k in range(4)
                for flip in (False, True)
                if np.array_equal(x, _dihedral(reference["x"].numpy(), k, flip))
            ]
            assert len(matches) == 1  # the pattern has no symmetry
            k, flip = matches[0]
            seen.add(matches[0])
            np.testing.assert_array_equal(y, _dihedral(reference["y"][0].numpy(), k, flip))
            np.testing.assert_array_equal(weight, _dihedral(reference["weight"][0].numpy(), k, flip))
    assert len(seen) >= 5  # the transforms do vary


def test_delineation_targets_are_cropped_and_augmented_with_y(tmp_path: Path) -> None:
    box = _asymmetric_box(tmp_path, "asym")
    whole = EOPatch.load(str(box))[contract.CULTIVATED][..., 0]
    _, boundary, distance = delineation_targets(whole)
    plain = PatchDataset([box], UNIT, patch_size=32, augment=False, delineation=True)
    augmented = PatchDataset([box], UNIT, patch_size=32, augment=True, seed=1, delineation=True)
    assert "aux" not in PatchDataset([box], UNIT, patch_size=32, augment=False)[0]
    for index in range(len(plain)):
        _, row, col = plain.patch_origin(index)
        crop = (slice(4 * row, 4 * row + 32), slice(4 * col, 4 * col + 32))
        aux = plain[index]["aux"].numpy()
        assert aux.shape == (2, 32, 32) and aux.dtype == np.float32
        np.testing.assert_array_equal(aux[0], boundary[crop])
        np.testing.assert_array_equal(aux[1], distance[crop])
        item = augmented[index]
        k, flip = next(
            (k, flip)
            for k in range(4)
            for flip in (False, True)
            if np.array_equal(item["x"].numpy(), _dihedral(plain[index]["x"].numpy(), k, flip))
        )
        np.testing.assert_array_equal(item["aux"].numpy(), _dihedral(aux, k, flip))
        np.testing.assert_array_equal(item["y"].numpy(), _dihedral(plain[index]["y"].numpy(), k, flip))


def test_augmentation_is_reproducible_and_changes_with_the_epoch(tmp_path: Path) -> None:
    box = _asymmetric_box(tmp_path, "asym")
    first = PatchDataset([box], UNIT, patch_size=32, seed=3)
    second = PatchDataset([box], UNIT, patch_size=32, seed=3)
    epoch_0 = [first[i]["x"] for i in range(len(first))]
    assert all(torch.equal(a, second[i]["x"]) for i, a in enumerate(epoch_0))
    first.set_epoch(1)
    assert not all(torch.equal(a, first[i]["x"]) for i, a in enumerate(epoch_0))
    first.set_epoch(0)
    assert all(torch.equal(a, first[i]["x"]) for i, a in enumerate(epoch_0))


def test_items_never_share_memory_with_the_cached_box(tmp_path: Path) -> None:
    box = _asymmetric_box(tmp_path, "asym")
    dataset = PatchDataset([box], UNIT, patch_size=96, augment=False)  # one patch: the whole box
    item = dataset[0]
    item["weight"].fill_(7)
    item["y"].fill_(7)
    assert dataset[0]["weight"].max() < 7 and dataset[0]["y"].max() <= 1


def test_lru_cache_holds_at_most_cache_boxes(boxes: list[Path], normaliser: PercentileNormaliser) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, augment=False, cache_boxes=2)
    first = [dataset.box_indices(b)[0] for b in range(3)]
    for b in range(3):
        dataset[first[b]]
        assert len(dataset.cached_boxes) <= 2
    assert dataset.cached_boxes == [boxes[1], boxes[2]]
    assert dataset.n_loads == 3
    dataset[first[1]]  # a hit moves box 1 to the most recent end
    assert dataset.cached_boxes == [boxes[2], boxes[1]] and dataset.n_loads == 3
    dataset[first[0]]  # a miss evicts the least recently used, box 2
    assert dataset.cached_boxes == [boxes[1], boxes[0]] and dataset.n_loads == 4
    assert pickle.loads(pickle.dumps(dataset)).cached_boxes == []  # workers never get loaded boxes


def test_prepared_box_memory_matches_the_documented_formula(boxes: list[Path]) -> None:
    box = load_box(boxes[0])
    frames, height, width, channels = read_box_shape(boxes[0])
    assert box.nbytes == prepared_box_nbytes(height, width, frames, channels)
    assert prepared_box_nbytes(500, 500, 40) == 270_000_160


def _batches(sampler: BoxBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_box_batch_sampler_batches_are_single_box_and_cover_every_patch(
    boxes: list[Path], normaliser: PercentileNormaliser
) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, augment=False)
    sampler = BoxBatchSampler(dataset, batch_size=4, shuffle=True, seed=0)
    for epoch in range(2):
        batches = _batches(sampler, epoch)
        assert len(batches) == len(sampler) == 3 * 3  # 9 patches per box: 4 + 4 + 1
        assert sorted(i for batch in batches for i in batch) == list(range(len(dataset)))
        owners = [{dataset.patch_origin(i)[0] for i in batch} for batch in batches]
        assert all(len(o) == 1 for o in owners)
        order = [next(iter(o)) for o in owners]
        assert len(set(order)) == 3  # box after box: each box's 3 batches in a row
        assert [len(set(order[i : i + 3])) for i in (0, 3, 6)] == [1, 1, 1]
    assert dataset.epoch == 1  # the sampler passes the epoch on to the augmentation


def test_box_batch_sampler_is_seeded(boxes: list[Path], normaliser: PercentileNormaliser) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH)
    first = BoxBatchSampler(dataset, batch_size=4, seed=5)
    second = BoxBatchSampler(dataset, batch_size=4, seed=5)
    assert _batches(first, 0) == _batches(second, 0)
    assert _batches(first, 1) == _batches(second, 1)
    assert _batches(first, 0) != _batches(first, 1)
    assert _batches(first, 0) != _batches(BoxBatchSampler(dataset, batch_size=4, seed=6), 0)
    ordered = list(BoxBatchSampler(dataset, batch_size=4, shuffle=False))
    assert [i for batch in ordered for i in batch] == list(range(len(dataset)))
    dropped = list(BoxBatchSampler(dataset, batch_size=4, shuffle=False, drop_last=True))
    assert len(dropped) == 6 and all(len(batch) == 4 for batch in dropped)
    assert len(BoxBatchSampler(dataset, batch_size=4, drop_last=True)) == 6


def test_data_loader_with_variable_frames_loads_each_box_once_per_epoch(
    boxes: list[Path], normaliser: PercentileNormaliser
) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, n_frames=None, cache_boxes=1)
    sampler = BoxBatchSampler(dataset, batch_size=5, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    frames = {str(box): shape[0] for box, shape in zip(boxes, dataset.box_shapes, strict=True)}
    assert len(set(frames.values())) > 1  # T does vary per box here
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = 0
        for batch in loader:
            assert len(set(batch["box"])) == 1
            assert batch["x"].shape[1:] == (frames[batch["box"][0]], 12, 16, 16)
            assert batch["y"].shape[1:] == (1, 64, 64)
            seen += len(batch["box"])
        assert seen == len(dataset)
        assert dataset.n_loads == 3 * (epoch + 1)


def test_grouped_batches_mix_boxes_of_one_group(boxes: list[Path], normaliser: PercentileNormaliser) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, n_frames=6, cache_boxes=2)
    sampler = BoxBatchSampler(dataset, batch_size=6, seed=0, group_boxes=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2  # 18 patches of the first group, 9 of the last
    assert sorted(i for batch in batches for i in batch) == list(range(len(dataset)))
    assert any(len({dataset.patch_origin(i)[0] for i in batch}) == 2 for batch in batches)
    with pytest.raises(ValueError, match="fixed n_frames"):
        BoxBatchSampler(PatchDataset(boxes, normaliser, patch_size=PATCH), 4, group_boxes=2)
    with pytest.raises(ValueError, match="cache_boxes"):
        BoxBatchSampler(dataset, 4, group_boxes=3)


def test_dataset_rejects_bad_arguments(
    boxes: list[Path], normaliser: PercentileNormaliser, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        PatchDataset(boxes, normaliser, patch_size=30)
    with pytest.raises(ValueError, match="smaller than"):
        PatchDataset(boxes, normaliser, patch_size=4 * (SIZE + 4))
    with pytest.raises(ValueError, match="fitted"):
        PatchDataset(boxes, PercentileNormaliser())
    with pytest.raises(ValueError, match="weights="):
        PatchDataset(boxes, normaliser, weights="ones")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an EOPatch folder"):
        PatchDataset([tmp_path / "missing"], normaliser)
    with pytest.raises(ValueError, match="more than once"):
        PatchDataset([boxes[0], boxes[0]], normaliser, patch_size=PATCH)
    unlabelled = tmp_path / "unlabelled"
    build_eopatch(size=SIZE, reference=False).save(str(unlabelled))
    with pytest.raises(ValueError, match="CULTIVATED"):
        PatchDataset([unlabelled], normaliser, patch_size=PATCH)


def test_split_boxes_holds_out_whole_boxes() -> None:
    boxes = [Path(f"eopatches/box-{i:03d}") for i in range(20)]
    train, val = split_boxes(boxes, 0.1, seed=0)
    assert len(val) == 2 and len(train) == 18
    assert not set(train) & set(val) and set(train) | set(val) == set(boxes)
    assert split_boxes(boxes[::-1], 0.1, seed=0) == (train, val)  # input order does not matter
    assert split_boxes(boxes, 0.1, seed=1) != (train, val)
    assert [len(part) for part in split_boxes(boxes[:2], 0.1)] == [1, 1]
    assert [len(part) for part in split_boxes(boxes[:3], 0.9)] == [1, 2]
    assert split_boxes(boxes[:1], 0.1) == (boxes[:1], [])
    assert split_boxes(boxes[:4], 0.0) == (boxes[:4], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_boxes(boxes, 1.0)


def test_random_patches_per_box_are_seeded_in_bounds_and_redrawn_every_epoch(
    boxes: list[Path], normaliser: PercentileNormaliser
) -> None:
    dataset = PatchDataset(boxes, normaliser, patch_size=PATCH, n_frames=4, patches_per_box=5, seed=3)
    assert len(dataset) == 15 and [len(dataset.box_indices(b)) for b in range(3)] == [5, 5, 5]
    first = [dataset.patch_origin(i) for i in range(len(dataset))]
    assert all(0 <= r <= SIZE - 16 and 0 <= c <= SIZE - 16 for _, r, c in first)
    assert [b for b, _, _ in first] == [0] * 5 + [1] * 5 + [2] * 5
    again = PatchDataset(boxes, normaliser, patch_size=PATCH, n_frames=4, patches_per_box=5, seed=3)
    assert [again.patch_origin(i) for i in range(15)] == first  # seeded
    dataset.set_epoch(1)
    second = [dataset.patch_origin(i) for i in range(15)]
    assert second != first  # new origins every epoch, off the fixed grid too
    assert {(r, c) for _, r, c in first + second} - {(r, c) for r in (0, 16, 24) for c in (0, 16, 24)}
    dataset.set_epoch(0)
    assert [dataset.patch_origin(i) for i in range(15)] == first
    whole = _pipeline(boxes[1], normaliser, 4)[STACK].transpose(0, 3, 1, 2)
    unaugmented = PatchDataset(
        boxes, normaliser, patch_size=PATCH, n_frames=4, patches_per_box=5, seed=3, augment=False
    )
    _, row, col = unaugmented.patch_origin(7)
    np.testing.assert_array_equal(unaugmented[7]["x"].numpy(), whole[:, :, row : row + 16, col : col + 16])
    with pytest.raises(ValueError, match="patches_per_box=0"):
        PatchDataset(boxes, normaliser, patch_size=PATCH, patches_per_box=0)

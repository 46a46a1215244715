"""Training patches of the deep models from EOPatch folders, without holding every box in memory
(the boxes are read and prepared by :mod:`s2agri.models.box_inputs`).

Grids and patch size
--------------------
``patch_size`` counts pixels of the **2.5 m target grid** (the grid the models output and the
challenge scores) and must be a multiple of ``SCALE = 4``: the seed's ``PS = 100`` gives 100 x 100
targets and 25 x 25 input pixels at 10 m (SPInet's 32 x 32 input patches are ``patch_size=128``).
Each box is tiled on a regular grid of non-overlapping input patches; when the box size is not a
multiple of the patch, the last row/column of patches is shifted back inside the box (it then
overlaps its neighbour). A patch at 10 m offset ``(row, col)`` has its targets at ``(4 row, 4 col)``.

Items
-----
``dataset[i]`` is ``{"x": (T, C, h, w) float32 at 10 m, "y": (1, 4h, 4w) float32 0/1,
"weight": (1, 4h, 4w) float32, "box": str(path)}``, plus ``"aux"`` (2, 4h, 4w) float32 (boundary
and distance targets) with ``delineation=True``. ``x`` is exactly the crop of
``ReflectanceTask -> ValidMaskTask -> FrameSelectionTask(n_frames) -> TensorStackTask(normaliser)``
run on the whole box, channels first: normalised to [0, 1], 0 where the observation is not valid.
``y``/``weight`` come from :func:`s2agri.tasks.tensors.targets` (weight 0 on NOT_DECLARED and, with
the challenge weight map, on the box border).

Frames: ``n_frames=None`` keeps every frame, so T varies per box: batch with
:class:`BoxBatchSampler` (one box per batch). ``n_frames=N`` keeps the N least cloudy frames in time
order; a box with fewer than N frames is **padded with all-zero frames at the end** (zero = no valid
observation), so T = N everywhere and any batching collates.

Monthly medians: ``months=(3, ..., 8)`` (the input of ``convlstm`` / ``convstar``) replaces the
frames by the per-pixel medians of the valid observations of each calendar month
(:func:`s2agri.tasks.monthly.monthly_inputs` on the reflectance, months without an observation
filled from the neighbouring months), so T = the number of months; a pixel without any valid
observation is 0 in every month. ``n_frames`` is then ignored.

Augmentation (``augment=True``): one of the 8 flips/90° rotations per item, the same on x (10 m) and
y/weight (2.5 m), drawn from ``(seed, epoch, index)``: reproducible, and different every epoch once
:meth:`PatchDataset.set_epoch` is called (:meth:`BoxBatchSampler.set_epoch` calls it). Turn it off for
validation.

Memory and the box cache
------------------------
A box is loaded when one of its patches is first asked for and kept in an LRU cache of at most
``cache_boxes`` prepared boxes. A prepared box keeps the selected frames' digital numbers (uint16,
normalised per patch, which gives the same float32 values as normalising the whole box and halves
the memory), the valid mask, ``y`` (bool) and ``weight`` (float32): ``T·H·W·(2·C + 1) + 16·H·W·5``
bytes, i.e. **270 MB for a 500 x 500 px box with T = 40** (240 MB bands, 10 MB valid, 4 MB y,
16 MB weight); a normalised float32 stack would be 480 MB. Loading peaks at about twice the
bands while frames are selected. Patches must be visited box by box (:class:`BoxBatchSampler`):
a random order over all patches (``DataLoader(shuffle=True)``) reloads a box for nearly every item.
Each DataLoader worker has its own cache (the cache is never pickled), and batches go to workers in
turn, so with ``num_workers = k`` every box is loaded by every worker: use ``num_workers=0`` (or 1).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from s2agri.tasks import contract
from s2agri.tasks.masks import ValidMaskTask
from s2agri.tasks.tensors import (
    WEIGHTS_KINDS,
    FrameSelectionTask,
    PercentileNormaliser,
    WeightsKind,
    normalised_stack,
)

from .box_inputs import (
    PreparedBox,
    check_box,
    dn_to_reflectance,
    feature_name,
    load_box,
    read_box_shape,
    read_feature_shape,
)

LOGGER = logging.getLogger(__name__)

SCALE = contract.SCALE
#: Default patch size, in 2.5 m pixels (the seed's PS = 100: 25 x 25 input pixels at 10 m).
PATCH_SIZE = 100


def patch_starts(size: int, patch: int) -> list[int]:
    """Offsets of non-overlapping patches along one axis; the last one is shifted inside ``size``."""
    if patch < 1 or size < patch:
        raise ValueError(f"a patch of {patch} px does not fit an axis of {size} px")
    starts = list(range(0, size - patch + 1, patch))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def _dihedral(array: np.ndarray, rotations: int, flip: bool) -> np.ndarray:
    """``array`` rotated by ``rotations`` x 90° and optionally mirrored, on its last two axes."""
    out = np.rot90(array, rotations, axes=(-2, -1))
    if flip:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


class PatchDataset(Dataset):
    """Patches of training boxes for the deep models: see the module docstring.

    :param boxes: EOPatch folders with BANDS, NORM_FACTORS, IS_DATA, CLM, CULTIVATED and NOT_DECLARED.
    :param normaliser: a fitted :class:`PercentileNormaliser` (fit it on the training boxes only).
    :param patch_size: patch side in 2.5 m pixels, a multiple of 4 (input side ``patch_size // 4``).
    :param n_frames: None: every frame (T varies per box); N: the N least cloudy, zero-padded to N.
    :param weights: ``"challenge"`` (weight map) or ``"none"`` (ones); 0 on NOT_DECLARED either way.
    :param augment: random flips/90° rotations, seeded by ``(seed, epoch, index)``.
    :param cache_boxes: prepared boxes kept in memory (LRU), about 270 MB each for 500 x 500 px, T = 40.
    :param valid_mask_task: the cloud masking (default ``ValidMaskTask()``: IS_DATA and not CLM).
    :param months: calendar months: monthly medians instead of frames (``convlstm``, ``convstar``).
    :param patches_per_box: None: the fixed grid of each box; N: N patches per box at uniformly random
        origins, drawn again every epoch from ``(seed, epoch, box)`` (a fixed number of samples per
        epoch whatever the box size, and patches that straddle the grid lines).
    :param delineation: items also carry ``"aux"`` (2, 4h, 4w) float32: the boundary (0/1) and
        distance targets of the delineation models, augmented like ``y``.
    """

    def __init__(
        self,
        boxes: Sequence[Path | str],
        normaliser: PercentileNormaliser,
        patch_size: int = PATCH_SIZE,
        n_frames: int | None = None,
        weights: WeightsKind = "challenge",
        augment: bool = True,
        seed: int = 0,
        cache_boxes: int = 2,
        *,
        valid_mask_task: ValidMaskTask | None = None,
        months: Sequence[int] | None = None,
        patches_per_box: int | None = None,
        delineation: bool = False,
    ) -> None:
        if patches_per_box is not None and (
            isinstance(patches_per_box, bool)
            or int(patches_per_box) != patches_per_box
            or patches_per_box < 1
        ):
            raise ValueError(
                f"patches_per_box={patches_per_box!r}: give a positive number of patches or None"
            )
        if not isinstance(normaliser, PercentileNormaliser) or not normaliser.fitted:
            raise ValueError(
                "normaliser must be a fitted PercentileNormaliser: fit it or load it with from_dict()"
            )
        if (
            isinstance(patch_size, bool)
            or int(patch_size) != patch_size
            or patch_size < SCALE
            or patch_size % SCALE
        ):
            raise ValueError(f"patch_size={patch_size!r}: give a positive multiple of {SCALE} (2.5 m pixels)")
        if weights not in WEIGHTS_KINDS:
            raise ValueError(f"weights={weights!r}: use one of {WEIGHTS_KINDS}")
        if isinstance(cache_boxes, bool) or int(cache_boxes) != cache_boxes or cache_boxes < 1:
            raise ValueError(f"cache_boxes={cache_boxes!r}: keep at least one box in memory")
        if seed < 0:
            raise ValueError(f"seed={seed}: give a non-negative seed")
        self.boxes = [check_box(box) for box in boxes]
        if not self.boxes:
            raise ValueError("no box given: pass the EOPatch folders of the training boxes")
        if len(set(self.boxes)) != len(self.boxes):
            raise ValueError("boxes are listed more than once: give each box folder once")
        self.normaliser = normaliser
        self.patch_size = int(patch_size)
        self.input_size = self.patch_size // SCALE
        self.months = tuple(months) if months else None
        self.frame_selection = FrameSelectionTask(None if self.months else n_frames)
        self.n_frames = len(self.months) if self.months else self.frame_selection.n_frames
        self.weights = weights
        self.augment = bool(augment)
        self.seed = int(seed)
        self.cache_boxes = int(cache_boxes)
        self.valid_mask_task = valid_mask_task or ValidMaskTask()
        self.delineation = bool(delineation)
        self.epoch = 0
        self.n_loads = 0  #: boxes loaded so far by this process (cache misses)
        self._cache: OrderedDict[int, PreparedBox] = OrderedDict()

        self.box_shapes: list[tuple[int, int, int, int]] = []
        rows, cols, owners, offsets = [], [], [], [0]
        for b, box in enumerate(self.boxes):
            shape = read_box_shape(box)
            reference = read_feature_shape(box, contract.CULTIVATED)
            if tuple(reference[:2]) != (SCALE * shape[1], SCALE * shape[2]):
                raise ValueError(
                    f"{box}: {feature_name(contract.CULTIVATED)} has shape {reference}, bands {shape}: expected 4x the bands"
                )
            if shape[-1] != normaliser.n_channels:
                raise ValueError(
                    f"{box}: {shape[-1]} bands, the normaliser has {normaliser.n_channels} channels"
                )
            if min(shape[1:3]) < self.input_size:
                raise ValueError(
                    f"{box}: {shape[1]} x {shape[2]} px is smaller than a {self.input_size} px input patch: lower patch_size"
                )
            self.box_shapes.append(shape)
            if patches_per_box is not None:
                grid = [(0, 0)] * int(patches_per_box)  # origins drawn in set_epoch
            else:
                grid = [
                    (r, c)
                    for r in patch_starts(shape[1], self.input_size)
                    for c in patch_starts(shape[2], self.input_size)
                ]
            rows += [r for r, _ in grid]
            cols += [c for _, c in grid]
            owners += [b] * len(grid)
            offsets.append(offsets[-1] + len(grid))
        self._rows = np.asarray(rows, np.int32)
        self._cols = np.asarray(cols, np.int32)
        self._owners = np.asarray(owners, np.int32)
        self._offsets = offsets
        self.patches_per_box = None if patches_per_box is None else int(patches_per_box)
        self._draw_origins()

    def _draw_origins(self) -> None:
        """Random patch origins of this epoch (``patches_per_box`` mode only)."""
        if self.patches_per_box is None:
            return
        for b, shape in enumerate(self.box_shapes):
            rng = np.random.default_rng([self.seed, self.epoch, b, 7])
            index = self.box_indices(b)
            n = len(index)
            self._rows[index.start : index.stop] = rng.integers(0, shape[1] - self.input_size + 1, n)
            self._cols[index.start : index.stop] = rng.integers(0, shape[2] - self.input_size + 1, n)

    def __len__(self) -> int:
        return len(self._owners)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # workers and pickles never carry loaded boxes
        return state

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that seeds the augmentation and the random patch origins (call before each
        epoch's DataLoader iteration)."""
        self.epoch = int(epoch)
        self._draw_origins()

    def box_indices(self, box: int) -> range:
        """Dataset indices of the patches of box number ``box`` (consecutive)."""
        return range(self._offsets[box], self._offsets[box + 1])

    @property
    def n_boxes(self) -> int:
        return len(self.boxes)

    def patch_origin(self, index: int) -> tuple[int, int, int]:
        """``(box number, row, col)`` of a patch's top-left input pixel at 10 m (before augmentation)."""
        index = self._check_index(index)
        return int(self._owners[index]), int(self._rows[index]), int(self._cols[index])

    @property
    def cached_boxes(self) -> list[Path]:
        """Boxes held in the LRU cache, least recently used first."""
        return [self.boxes[b] for b in self._cache]

    def prepared(self, box: int) -> PreparedBox:
        """The prepared box number ``box``, from the LRU cache or loaded into it."""
        cached = self._cache.get(box)
        if cached is not None:
            self._cache.move_to_end(box)
            return cached
        while len(self._cache) >= self.cache_boxes:
            self._cache.popitem(last=False)
        prepared = load_box(
            self.boxes[box],
            self.n_frames,
            self.weights,
            valid_mask_task=self.valid_mask_task,
            months=self.months,
            delineation=self.delineation,
        )
        self.n_loads += 1
        LOGGER.debug("loaded %s (%.1f MB)", self.boxes[box], prepared.nbytes / 1e6)
        self._cache[box] = prepared
        return prepared

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"patch {index} out of range for {n} patches")
        return int(index) % n

    def __getitem__(self, index: int) -> dict[str, Any]:
        b, row, col = self.patch_origin(index)
        index = self._check_index(index)
        box = self.prepared(b)
        s, big = self.input_size, self.patch_size
        window = (slice(None), slice(row, row + s), slice(col, col + s))
        reflectance = dn_to_reflectance(box.bands[window], box.factors)
        stack = normalised_stack(reflectance, box.valid[window], self.normaliser)  # (T, s, s, C)
        frames = stack.shape[0]
        x = np.zeros((self.n_frames or frames, stack.shape[-1], s, s), np.float32)
        x[:frames] = stack.transpose(0, 3, 1, 2)  # pad: zero frames at the end when T < n_frames
        target = (slice(SCALE * row, SCALE * row + big), slice(SCALE * col, SCALE * col + big))
        y = box.y[target][None].astype(np.float32)
        weight = box.weight[target][None].copy()  # never a view of the cached box
        arrays = {"x": x, "y": y, "weight": weight}
        if box.aux is not None:
            arrays["aux"] = box.aux[(slice(None), *target)].copy()
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            rotations, flip = int(rng.integers(4)), bool(rng.integers(2))
            arrays = {key: _dihedral(a, rotations, flip) for key, a in arrays.items()}
        item: dict[str, Any] = {key: torch.from_numpy(a) for key, a in arrays.items()}
        item["box"] = str(self.boxes[b])
        return item


class BoxBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices that visit the boxes one after another (one box per batch by default).

    Each epoch, with ``shuffle``, the box order and the patch order inside each box are permuted with
    the seed ``(seed, epoch)``; every patch is in exactly one batch per epoch; a box's last batch may
    be smaller (dropped with ``drop_last``). Without ``shuffle`` the order is the dataset's. Batches
    then hold patches of one box, so ``n_frames=None`` (T per box) collates with the default collate,
    and every box is loaded once per epoch with any ``cache_boxes``.

    ``group_boxes = k > 1`` (only with a fixed ``n_frames``, and ``k <= cache_boxes``) shuffles the
    patches of k consecutive boxes together, so batches mix up to k boxes.
    Use ``DataLoader(dataset, batch_sampler=sampler)`` and call :meth:`set_epoch` before each epoch
    (it also sets the dataset's epoch, which seeds the augmentation).
    """

    def __init__(
        self,
        dataset: PatchDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        *,
        drop_last: bool = False,
        group_boxes: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give a positive number of patches")
        if seed < 0:
            raise ValueError(f"seed={seed}: give a non-negative seed")
        if isinstance(group_boxes, bool) or int(group_boxes) != group_boxes or group_boxes < 1:
            raise ValueError(f"group_boxes={group_boxes!r}: give a positive number of boxes")
        if group_boxes > 1 and dataset.n_frames is None:
            raise ValueError(
                "group_boxes > 1 mixes boxes in a batch: it needs a fixed n_frames in the dataset"
            )
        if group_boxes > dataset.cache_boxes:
            raise ValueError(
                f"group_boxes={group_boxes} exceeds the dataset's cache_boxes={dataset.cache_boxes}: boxes would be reloaded"
            )
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.group_boxes = int(group_boxes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch of the shuffling, and the dataset's (augmentation) epoch."""
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def _groups(self) -> list[list[int]]:
        order = np.arange(self.dataset.n_boxes)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        return [order[i : i + self.group_boxes].tolist() for i in range(0, len(order), self.group_boxes)]

    def _group_sizes(self) -> list[int]:
        return [sum(len(self.dataset.box_indices(b)) for b in group) for group in self._groups()]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        for group in self._groups():
            index = np.concatenate([np.asarray(self.dataset.box_indices(b)) for b in group])
            if self.shuffle:
                index = rng.permutation(index)
            for start in range(0, len(index), self.batch_size):
                batch = index[start : start + self.batch_size]
                if self.drop_last and len(batch) < self.batch_size:
                    break
                yield batch.tolist()

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(n / self.batch_size) for n in self._group_sizes())


def split_boxes(
    boxes: Sequence[Path | str], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """``(train, val)``: a seeded split of whole boxes (no box in both), each sorted by path.

    ``round(val_fraction × n)`` boxes go to validation, at least one and at most ``n - 1`` when there
    are at least 2 boxes and ``val_fraction > 0``; a single box goes to training. The input order does
    not matter (the boxes are sorted before the draw).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: give a fraction in [0, 1)")
    paths = sorted(Path(box) for box in boxes)
    if len(set(paths)) != len(paths):
        raise ValueError("boxes are listed more than once: give each box folder once")
    n = len(paths)
    n_val = 0
    if n >= 2 and val_fraction > 0:
        n_val = min(max(1, round(val_fraction * n)), n - 1)
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [p for i, p in enumerate(paths) if i not in chosen]
    val = [p for i, p in enumerate(paths) if i in chosen]
    return train, val


__all__ = ["PATCH_SIZE", "BoxBatchSampler", "PatchDataset", "patch_starts", "split_boxes"]

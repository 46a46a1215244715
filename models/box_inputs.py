"""Training boxes read from EOPatch folders: shapes from the file headers, and boxes prepared for
cropping (:class:`PreparedBox`: the selected frames' digital numbers, validity and 2.5 m targets).

No torch here: :mod:`s2agri.models.datasets` crops patches of prepared boxes for the deep models,
and its module docstring gives the memory of a prepared box.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from eolearn.core import EOPatch
from eolearn.core.eodata_io import get_filesystem_data_info
from eolearn.core.types import Feature
from fs.osfs import OSFS

from s2agri.tasks import contract
from s2agri.tasks.delineation import delineation_targets
from s2agri.tasks.masks import ValidMaskTask
from s2agri.tasks.monthly import monthly_inputs
from s2agri.tasks.tensors import (
    FrameSelectionTask,
    WeightsKind,
    targets,
)

SCALE = contract.SCALE


_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def feature_name(feature: Feature) -> str:
    return f"{feature[0].value}/{feature[1]}"


def check_box(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not an EOPatch folder: give the box folders (e.g. eopatches/box-000)")
    return path


def _npy_shape(raw: BinaryIO, *, compressed: bool) -> tuple[int, ...] | None:
    """The array shape in a ``.npy`` header (None for an unknown format version)."""
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")) if compressed else raw
        read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(handle))
        if read_header is None:
            return None
        shape, _, _ = read_header(handle)
        return tuple(int(n) for n in shape)


def read_feature_shape(box: Path | str, feature: Feature) -> tuple[int, ...]:
    """Shape of a stored array feature, read from the ``.npy`` (or ``.npy.gz``) header only.

    Other storage formats fall back to loading the feature. A ``ValueError`` names a missing feature.
    """
    path = check_box(box)
    filesystem = OSFS(str(path))
    try:
        info = get_filesystem_data_info(filesystem, "/", [feature])
        location = info.features.get(feature[0], {}).get(feature[1])
        if location is None:
            raise ValueError(f"{path} has no {feature_name(feature)}: check the box folder and feature name")
        if location.endswith((".npy", ".npy.gz")):
            with filesystem.openbin(location, "r") as raw:
                shape = _npy_shape(raw, compressed=location.endswith(".gz"))
            if shape is not None:
                return shape
    finally:
        filesystem.close()
    return tuple(EOPatch.load(str(path), features=[feature])[feature].shape)


def read_box_shape(box: Path | str) -> tuple[int, int, int, int]:
    """``(T, H, W, C)`` of a box's ``data/BANDS``, from the file header (no band is loaded)."""
    shape = read_feature_shape(box, contract.BANDS)
    if len(shape) != 4:
        raise ValueError(f"{box}: {feature_name(contract.BANDS)} has shape {shape}, expected (T, H, W, C)")
    return shape


def _valid_inputs(task: ValidMaskTask) -> list[Feature]:
    """The features :class:`ValidMaskTask` reads, given its options."""
    features = [task.is_data_feature]
    if task.use_clm:
        features.append(task.clm_feature)
    if task.clp_threshold is not None:
        features.append(task.clp_feature)
    if task.scl_invalid_classes is not None:
        features.append(task.scl_feature)
    return features


def dn_to_reflectance(dn: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Float32 reflectance of (T, ..., C) uint16 DNs and (T,) factors, as ``ReflectanceTask`` (clip=True)."""
    reflectance = dn.astype(np.float32)
    np.minimum(reflectance, np.float32(contract.MAX_DN), out=reflectance)
    reflectance *= factors.reshape((-1,) + (1,) * (dn.ndim - 1))
    return reflectance


def _load_inputs(
    box: Path, frame_selection: FrameSelectionTask, valid_task: ValidMaskTask, extra: Sequence[Feature] = ()
) -> tuple[EOPatch, np.ndarray, np.ndarray, np.ndarray]:
    """The loaded EOPatch, and the selected frames' DNs (T, H, W, C), factors (T,) and valid (T, H, W)."""
    features = [contract.BANDS, contract.NORM_FACTORS, *_valid_inputs(valid_task), *extra]
    try:
        eopatch = EOPatch.load(str(box), features=list(dict.fromkeys(features)))
    except OSError as error:
        raise ValueError(f"{box}: cannot load {[feature_name(f) for f in features]} ({error})") from error
    bands = np.asarray(eopatch[contract.BANDS])
    if bands.dtype != np.uint16 or bands.ndim != 4:
        raise ValueError(
            f"{box}: {feature_name(contract.BANDS)} has dtype {bands.dtype} and shape {bands.shape}: expected uint16 (T, H, W, C)"
        )
    factors = np.asarray(eopatch[contract.NORM_FACTORS], dtype=np.float32)
    if factors.shape != (bands.shape[0], 1) or not np.all(np.isfinite(factors) & (factors > 0)):
        raise ValueError(
            f"{box}: {feature_name(contract.NORM_FACTORS)} must hold one finite positive factor per frame, shape ({bands.shape[0]}, 1)"
        )
    valid = np.asarray(valid_task.execute(eopatch)[valid_task.output_feature])
    if valid.shape != (*bands.shape[:3], 1):
        raise ValueError(f"{box}: valid mask has shape {valid.shape}, bands {bands.shape}")
    index = frame_selection.frame_indices(valid)
    if index.size < bands.shape[0]:
        bands, factors, valid = bands[index], factors[index], valid[index]
    return eopatch, bands, factors[:, 0], valid[..., 0]


def box_observations(
    boxes: Sequence[Path | str],
    n_frames: int | None = None,
    *,
    valid_mask_task: ValidMaskTask | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(reflectance (H, W, C) float32, valid (H, W))`` per selected frame of each box, one box at a time.

    Feed it to :meth:`PercentileNormaliser.fit` on the training boxes, with the dataset's ``n_frames``
    (so the percentiles describe the frames the model sees). Holds one box's bands at a time.
    """
    selection = FrameSelectionTask(n_frames)
    valid_task = valid_mask_task or ValidMaskTask()
    for box in boxes:
        _, bands, factors, valid = _load_inputs(check_box(box), selection, valid_task)
        for t in range(bands.shape[0]):
            yield dn_to_reflectance(bands[t : t + 1], factors[t : t + 1])[0], valid[t]


@dataclass
class PreparedBox:
    """One box ready for cropping: selected frames' DNs and validity at 10 m, targets at 2.5 m."""

    bands: (
        np.ndarray
    )  #: (T, H, W, C) uint16 digital numbers of the selected frames (float32 reflectance of monthly medians)
    factors: np.ndarray  #: (T,) float32 NORM_FACTORS (ones for monthly medians)
    valid: np.ndarray  #: (T, H, W) bool
    y: np.ndarray  #: (4H, 4W) bool, CULTIVATED
    weight: np.ndarray  #: (4H, 4W) float32 loss weight
    #: (2, 4H, 4W) float32 boundary (0/1) and distance targets of the delineation models, else None
    aux: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.bands, self.factors, self.valid, self.y, self.weight, self.aux)
        return sum(a.nbytes for a in arrays if a is not None)


def prepared_box_nbytes(
    height: int, width: int, frames: int, channels: int = len(contract.BAND_NAMES)
) -> int:
    """Bytes of a cached :class:`PreparedBox` of ``frames`` frames of H x W px (see the module docstring)."""
    pixels = height * width
    return frames * pixels * (2 * channels + 1) + frames * 4 + SCALE * SCALE * pixels * (1 + 4)


def load_box(
    box: Path | str,
    n_frames: int | None = None,
    weights: WeightsKind = "challenge",
    *,
    valid_mask_task: ValidMaskTask | None = None,
    months: Sequence[int] | None = None,
    delineation: bool = False,
) -> PreparedBox:
    """Loads and prepares one training box (BANDS, NORM_FACTORS, validity inputs, reference masks);
    with ``months``, the monthly medians instead of the frames (module docstring); with
    ``delineation``, the boundary and distance targets of ``CULTIVATED`` as well
    (:func:`s2agri.tasks.delineation.delineation_targets`)."""
    path = check_box(box)
    eopatch, bands, factors, valid = _load_inputs(
        path,
        FrameSelectionTask(None if months else n_frames),
        valid_mask_task or ValidMaskTask(),
        extra=(contract.CULTIVATED, contract.NOT_DECLARED),
    )
    if months:
        bands, valid = monthly_inputs(
            dn_to_reflectance(bands, factors), valid, eopatch.get_timestamps(), months
        )
        factors = np.ones(len(months), np.float32)
    y, weight = targets(eopatch, weights)
    expected = (SCALE * bands.shape[1], SCALE * bands.shape[2])
    if y.shape != expected:
        raise ValueError(
            f"{path}: {feature_name(contract.CULTIVATED)} has shape {y.shape}, bands {bands.shape[1:3]}: expected {expected} at 2.5 m"
        )
    aux = None
    if delineation:
        _, boundary, distance = delineation_targets(y)
        aux = np.stack([boundary.astype(np.float32), distance])
    return PreparedBox(np.ascontiguousarray(bands), factors, valid, y.astype(bool), weight, aux)

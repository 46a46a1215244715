"""The challenge weight map (``../shared/spec/weighted-mcc.md``), vectorised.

Each 8-connected parcel of CULTIVATED gets a weight that favours small parcels
(:func:`parcel_weight`); the background ring of radius 2 around each parcel gets the mean of
twice the weights of the parcels whose rings cover it; other background pixels get 1;
NOT_DECLARED pixels and the image border (first row/column, last two rows/columns) get 0.

:func:`weight_map` computes it without a loop over parcels: a ring pixel is a background pixel
whose ``disk(2)`` neighbourhood holds a parcel pixel, so its value only depends on the distinct
parcel labels among its 13 neighbours. :func:`reference_weight_map` is the direct port of the
starter-pack loop; tests and ``benchmarks/bench_weight_map.py`` compare the two.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from scipy.ndimage import binary_dilation
from scipy.stats import skewnorm
from skimage.measure import label
from skimage.morphology import dilation, disk

from . import contract

LOGGER = logging.getLogger(__name__)

#: Parcels of at least this many pixels get weight 1.
LARGE_PARCEL_PX = 400
#: Radius of the ``disk`` footprint of the ring around each parcel.
RING_RADIUS = 2

Feature = tuple[FeatureType, str]


@lru_cache(maxsize=1)
def _weight_table() -> np.ndarray:
    """``y`` of the spec: ``skewnorm`` over ``linspace(1, 400, 400)``, scaled to a max of 2."""
    xs = np.linspace(1, LARGE_PARCEL_PX, LARGE_PARCEL_PX)
    y = skewnorm.pdf(xs, a=15, loc=35 - 100 / 3.14, scale=100)
    table = y / np.max(y) + 1
    table.flags.writeable = False
    return table


def parcel_weight(n: np.ndarray | float) -> np.ndarray:
    """Weight of parcels of ``n`` pixels, vectorised over ``n`` (float64, same shape).

    ``n >= 400`` gives 1; ``1 <= n < 400`` gives ``y[int(n)]`` exactly as the starter pack
    (which indexes position ``n``, i.e. the skew-normal at ``x = n + 1``). ``n == 0`` (no
    pixels, i.e. no parcel: the background label of a per-label count) gives 0, not ``y[0]``.
    Negative or NaN counts raise ``ValueError``.
    """
    counts = np.asarray(n, dtype=np.float64)
    if np.isnan(counts).any() or (counts < 0).any():
        raise ValueError("parcel pixel counts must be non-negative numbers")
    table = _weight_table()
    index = np.floor(np.minimum(counts, LARGE_PARCEL_PX - 1)).astype(np.intp)
    weights = np.where(counts >= LARGE_PARCEL_PX, 1.0, table[index])
    return np.where(counts == 0, 0.0, weights)


def _as_2d_bool(array: np.ndarray, name: str) -> np.ndarray:
    """A (H, W) boolean view of a (H, W) or (H, W, 1) mask."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, 1), got {array.shape}")
    return array.astype(bool, copy=False)


def _prepare(cultivated: np.ndarray, not_declared: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    mask = _as_2d_bool(cultivated, "cultivated")
    if not_declared is None:
        return mask, None
    nd = _as_2d_bool(not_declared, "not_declared")
    if nd.shape != mask.shape:
        raise ValueError(f"not_declared shape {nd.shape} differs from cultivated shape {mask.shape}")
    return mask, nd


def _finish(weights: np.ndarray, not_declared: np.ndarray | None) -> np.ndarray:
    """Step 4 of the spec, in place: NOT_DECLARED and the border rows/columns get 0."""
    if not_declared is not None:
        weights[not_declared] = 0
    weights[:1, :] = 0
    weights[:, :1] = 0
    weights[-2:, :] = 0
    weights[:, -2:] = 0
    return weights


def weight_map(cultivated: np.ndarray, not_declared: np.ndarray | None = None) -> np.ndarray:
    """The challenge weight map of one box, (H, W) float32, equal to :func:`reference_weight_map`.

    ``cultivated`` and ``not_declared`` are (H, W) or (H, W, 1) masks. Vectorised: parcel
    weights come from a per-label lookup table; for every background pixel next to a parcel
    the 13 labels of its ``disk(2)`` neighbourhood are gathered and sorted, and each distinct
    non-zero label adds ``2 * w`` (in increasing label order, in float32, like the reference
    loop) to the contour sum and 1 to the count. Parcel pixels on another parcel's ring are
    not computed: their parcel weight overwrites the ring value in the reference too.
    """
    mask, nd = _prepare(cultivated, not_declared)
    height, width = mask.shape
    labels, n_labels = label(mask, return_num=True)
    label_weights = parcel_weight(np.bincount(labels.ravel(), minlength=n_labels + 1))  # float64
    label_weights[0] = 0.0  # background

    weights = label_weights.astype(np.float32)[labels]
    footprint = disk(RING_RADIUS).astype(bool)
    ring = binary_dilation(mask, footprint, border_value=0) & ~mask
    rows, cols = np.nonzero(ring)
    if rows.size:
        r = RING_RADIUS
        padded = np.pad(labels, r)
        offsets = np.argwhere(footprint) - r
        neighbours = np.empty((rows.size, len(offsets)), dtype=labels.dtype)
        for k, (dr, dc) in enumerate(offsets):
            neighbours[:, k] = padded[rows + r + dr, cols + r + dc]
        neighbours.sort(axis=1)
        distinct = neighbours != 0
        distinct[:, 1:] &= neighbours[:, 1:] != neighbours[:, :-1]
        contours = np.zeros(rows.size, dtype=np.float32)
        for k in range(neighbours.shape[1]):
            take = distinct[:, k]
            added = contours[take] + 2 * label_weights[neighbours[take, k]]
            contours[take] = added.astype(np.float32)
        counts = np.count_nonzero(distinct, axis=1).astype(np.float32)
        weights[rows, cols] = contours / counts
    weights[weights == 0] = 1
    LOGGER.debug("weight map %dx%d: %d parcels, %d ring pixels", height, width, n_labels, rows.size)
    return _finish(weights, nd)


def reference_weight_map(cultivated: np.ndarray, not_declared: np.ndarray | None = None) -> np.ndarray:
    """Direct, slow port of the starter-pack loop over parcels (the reference of tests and benchmarks).

    One full-size ``skimage.morphology.dilation`` per parcel: O(parcels x pixels). Its default
    ``mode="reflect"`` border gives the same rings as an outside-is-background border, because
    a reflected neighbour is never farther than the true one and ``disk`` is symmetric. Same
    inputs and output as :func:`weight_map`.
    """
    mask, nd = _prepare(cultivated, not_declared)
    labelled = label(mask)
    weights = np.zeros(mask.shape, dtype=np.float32)
    contours = np.zeros(mask.shape, dtype=np.float32)
    counts = np.zeros(mask.shape, dtype=np.float32)
    footprint = disk(RING_RADIUS)
    for parcel_label in range(1, labelled.max() + 1):
        parcel = labelled == parcel_label
        w = parcel_weight(int(np.count_nonzero(parcel)))[()]
        weights[parcel] = w
        ring = dilation(parcel, footprint) & ~parcel
        contours[ring] += 2 * w
        counts[ring] += 1
    result = np.zeros(mask.shape, dtype=np.float32)
    on_ring = contours > 0
    result[on_ring] = contours[on_ring] / counts[on_ring]
    on_parcel = weights > 0
    result[on_parcel] = weights[on_parcel]
    result[result == 0] = 1
    return _finish(result, nd)


class WeightMapTask(EOTask):
    """Adds the challenge weight map, (H, W, 1) float32, to an EOPatch.

    Computed from ``cultivated_feature`` and, when given and present in the EOPatch,
    ``not_declared_feature`` (a missing NOT_DECLARED is logged and treated as empty).
    """

    def __init__(
        self,
        cultivated_feature: Feature = contract.CULTIVATED,
        not_declared_feature: Feature | None = contract.NOT_DECLARED,
        output_feature: Feature = (FeatureType.DATA_TIMELESS, "WEIGHTS"),
    ) -> None:
        mask_types = [FeatureType.MASK_TIMELESS]
        self.cultivated_feature = self.parse_feature(cultivated_feature, allowed_feature_types=mask_types)
        self.not_declared_feature = (
            None
            if not_declared_feature is None
            else self.parse_feature(not_declared_feature, allowed_feature_types=mask_types)
        )
        self.output_feature = self.parse_feature(
            output_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )

    def execute(self, eopatch: EOPatch) -> EOPatch:
        """Computes the map from the EOPatch's masks and stores it under ``output_feature``."""
        not_declared = None
        if self.not_declared_feature is not None:
            if self.not_declared_feature in eopatch:
                not_declared = eopatch[self.not_declared_feature]
            else:
                LOGGER.warning("%s missing: weight map without NOT_DECLARED", self.not_declared_feature)
        weights = weight_map(eopatch[self.cultivated_feature], not_declared)
        eopatch[self.output_feature] = weights[..., np.newaxis]
        return eopatch

"""Training sets of the pixel models: stratified, seeded, memory-bounded samples from many boxes.

How 10 m features meet 2.5 m labels
-----------------------------------
Samples are drawn on the **2.5 m reference grid** (the grid the challenge scores), and each sample's
features are the 10 m feature stack (H, W, F) **bicubically interpolated at that 2.5 m pixel**, exactly
as ``cv2.resize(features, (4W, 4H), interpolation=cv2.INTER_CUBIC)`` would give it there: OpenCV's
cubic convolution (``A = -0.75``), pixel-centre alignment (2.5 m pixel ``i`` sits at 10 m coordinate
``(i + 0.5) / 4 - 0.5``) and replicated borders. :class:`FeatureUpsampler` computes it only at the
sampled points (a parallel numba kernel, separable 4 x 4 taps), and for whole row strips with ``cv2.resize`` (a
2-row halo makes a strip identical to the same rows of the full-box resize), so training samples and
the ``"feature-upsample"`` prediction of :mod:`s2agri.tasks.predict_pixel` see the same numbers.
``interpolation="nearest"`` takes the containing 10 m pixel instead (the features the
``"proba-upsample"`` prediction sees).

NaN features (a 5x5 window with no valid observation) would spread over the 4 x 4 taps of the cubic
kernel. Before interpolating, each NaN is replaced by the median of its feature over the box's finite
values (0 if the feature is NaN everywhere); after interpolating, a 2.5 m pixel gets NaN back for every
feature that is NaN in its containing 10 m pixel. The models then use their native missing-value
handling exactly where the 10 m data was missing, and nowhere else.

Sampling
--------
:func:`sample_box` draws up to ``n_per_box`` pixels of one box without replacement; NOT_DECLARED pixels
are never drawn (nor, when a weight map is used, pixels of weight 0: the image border). ``"balanced"``
(default) asks for ``n_per_box // 2`` cultivated and the rest not cultivated, each capped by what the box
has (the short class is not topped up by the other); ``"proportional"`` draws uniformly from all eligible
pixels, keeping the box's class ratio. ``weights=True`` attaches the challenge weight map
(:func:`s2agri.tasks.weights.weight_map`) of each sample as its ``sample_weight``.

:class:`SampleAccumulator` keeps a uniform random subset of at most ``max_samples`` of everything added
(per class halves when balanced) by bottom-k sampling: every sample gets a uniform random key and the
smallest keys are kept, updated in place in preallocated buffers. Its memory is bounded by
``max_samples`` whatever the number of boxes. Everything is seeded: the same seed and inputs in the same
order give the same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import cv2
import numpy as np
from eolearn.core import EOPatch, FeatureType
from numba import njit, prange

from s2agri.tasks import contract
from s2agri.tasks.weights import weight_map

LOGGER = logging.getLogger(__name__)

Strategy = Literal["balanced", "proportional"]
Interpolation = Literal["bicubic", "nearest"]
STRATEGIES: tuple[str, ...] = ("balanced", "proportional")
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "nearest")

SCALE = contract.SCALE
#: OpenCV's cubic-convolution parameter (``INTER_CUBIC``).
CUBIC_A = np.float32(-0.75)
#: Points interpolated per block in :meth:`FeatureUpsampler.at` (bounds the tap arrays).
POINT_CHUNK = 262144
#: cv2.resize handles at most this many channels per call (CV_CN_MAX: 512 in OpenCV 4, 128 in OpenCV 5).
CV_MAX_CHANNELS = 128
#: Default features of the pixel models.
STATS5X5 = (FeatureType.DATA_TIMELESS, "STATS5X5")


def cubic_weights(t: np.ndarray) -> np.ndarray:
    """(N, 4) float32 OpenCV cubic weights of taps ``-1, 0, 1, 2`` for fractional offsets ``t`` in [0, 1)."""
    x = np.asarray(t, dtype=np.float32)
    a = CUBIC_A
    one = np.float32(1)
    w0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + one
    w2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
    w3 = one - w0 - w1 - w2
    return np.stack([w0, w1, w2, w3], axis=-1)


def _taps(index: np.ndarray, size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Clamped source taps (N, 4) and their cubic weights (N, 4) for target indices ``index``."""
    coordinate = (index.astype(np.float64) + 0.5) / scale - 0.5
    base = np.floor(coordinate)
    weights = cubic_weights((coordinate - base).astype(np.float32))
    taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, size - 1)
    return taps, weights


def _resize(block: np.ndarray, scale: int) -> np.ndarray:
    """``cv2.resize`` x ``scale`` with INTER_CUBIC of an (h, w, F) float32 block, any F."""
    h, w, n = block.shape
    size = (w * scale, h * scale)
    out = np.empty((h * scale, w * scale, n), dtype=np.float32)
    for start in range(0, n, CV_MAX_CHANNELS):
        part = np.ascontiguousarray(block[..., start : start + CV_MAX_CHANNELS])
        out[..., start : start + part.shape[-1]] = cv2.resize(
            part, size, interpolation=cv2.INTER_CUBIC
        ).reshape(h * scale, w * scale, part.shape[-1])
    return out


@njit(parallel=True, cache=True)
def _gather_bicubic(
    filled: np.ndarray, ty: np.ndarray, wy: np.ndarray, tx: np.ndarray, wx: np.ndarray, out: np.ndarray
) -> None:
    """``out[n] = sum_i wy[n, i] * sum_j wx[n, j] * filled[ty[n, i], tx[n, j]]`` (horizontal pass first,
    the order of ``cv2.resize``), parallel over points; the feature axis is innermost (contiguous, SIMD)."""
    n_features = filled.shape[2]
    for n in prange(out.shape[0]):
        acc = out[n]
        acc[:] = 0.0
        line = np.empty(n_features, np.float32)
        for i in range(4):
            line[:] = 0.0
            for j in range(4):
                weight = wx[n, j]
                source = filled[ty[n, i], tx[n, j]]
                for f in range(n_features):
                    line[f] += weight * source[f]
            weight = wy[n, i]
            for f in range(n_features):
                acc[f] += weight * line[f]


class FeatureUpsampler:
    """The x4 bicubic (OpenCV ``INTER_CUBIC``) upsampling of one box's (H, W, F) 10 m features.

    NaNs are median-filled before and restored after interpolation (see the module docstring); the
    per-feature medians are computed once, here.
    """

    def __init__(self, features: np.ndarray, scale: int = SCALE) -> None:
        features = np.asarray(features)
        if features.ndim != 3 or min(features.shape) == 0:
            raise ValueError(f"features must have shape (H, W, F) with no empty axis, got {features.shape}")
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        self.scale = int(scale)
        nan = np.isnan(self.features)
        self.nan_mask: np.ndarray | None = nan if nan.any() else None
        self.filled = self.features
        if self.nan_mask is not None:
            n_features = self.features.shape[-1]
            columns = np.flatnonzero(nan.any(axis=(0, 1)))
            fill = np.zeros(n_features, dtype=np.float32)
            flat = self.features.reshape(-1, n_features)[:, columns]
            has_value = ~np.isnan(flat).all(axis=0)
            fill[columns[has_value]] = np.nanmedian(flat[:, has_value], axis=0)
            self.filled = np.where(nan, fill, self.features).astype(np.float32)
            LOGGER.debug("filled %d NaN feature values with per-feature medians", int(nan.sum()))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (H, W, F) of the 10 m features."""
        return self.features.shape

    def _check_points(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows).reshape(-1)
        cols = np.asarray(cols).reshape(-1)
        height, width, _ = self.shape
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols differ in length: {rows.size} and {cols.size}")
        if rows.size and (
            rows.min() < 0
            or cols.min() < 0
            or rows.max() >= height * self.scale
            or cols.max() >= width * self.scale
        ):
            raise ValueError(f"points outside the {height * self.scale} x {width * self.scale} target grid")
        return rows.astype(np.int64), cols.astype(np.int64)

    def at(self, rows: np.ndarray, cols: np.ndarray, interpolation: Interpolation = "bicubic") -> np.ndarray:
        """(N, F) float32 features at 2.5 m pixels ``(rows, cols)``, equal to the full upsampled stack there."""
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        rows, cols = self._check_points(rows, cols)
        if interpolation == "nearest":
            return self.features[rows // self.scale, cols // self.scale]
        height, width, n_features = self.shape
        out = np.empty((rows.size, n_features), dtype=np.float32)
        for start in range(0, rows.size, POINT_CHUNK):
            r = rows[start : start + POINT_CHUNK]
            c = cols[start : start + POINT_CHUNK]
            ty, wy = _taps(r, height, self.scale)
            tx, wx = _taps(c, width, self.scale)
            block = out[start : start + r.size]
            _gather_bicubic(self.filled, ty, wy, tx, wx, block)
            if self.nan_mask is not None:
                block[self.nan_mask[r // self.scale, c // self.scale]] = np.nan
        return out

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Upsampled rows of 10 m rows ``start:stop``: (4 (stop - start), 4 W, F) float32.

        Identical to the same rows of ``cv2.resize`` of the whole (NaN-filled) box: a 2-row halo covers
        the cubic kernel's reach.
        """
        height = self.shape[0]
        if not 0 <= start < stop <= height:
            raise ValueError(f"need 0 <= start < stop <= {height}, got {start}, {stop}")
        low, high = max(0, start - 2), min(height, stop + 2)
        up = _resize(self.filled[low:high], self.scale)
        first = (start - low) * self.scale
        up = up[first : first + (stop - start) * self.scale]
        if self.nan_mask is not None:
            nan = self.nan_mask[start:stop].repeat(self.scale, axis=0).repeat(self.scale, axis=1)
            up[nan] = np.nan
        return up


@dataclass
class SampleSet:
    """Training samples: features ``X`` (N, F) float32, labels ``y`` (N,) uint8 (1 = cultivated),
    ``weight`` (N,) float32, and where they come from: ``box`` id and 2.5 m ``row``/``col`` (int32).
    """

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    box: np.ndarray
    row: np.ndarray
    col: np.ndarray
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        if self.X.ndim != 2 or self.X.shape[0] != n:
            raise ValueError(f"X must have shape ({n}, F) to match y, got {self.X.shape}")
        for name in ("weight", "box", "row", "col"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        if self.feature_names is not None and len(self.feature_names) != self.X.shape[1]:
            raise ValueError(f"{len(self.feature_names)} feature names for {self.X.shape[1]} features")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(getattr(self, f.name).nbytes for f in fields(self) if f.name != "feature_names")

    def class_counts(self) -> np.ndarray:
        """``[n_not_cultivated, n_cultivated]``."""
        return np.bincount(self.y, minlength=2)[:2]

    def subset(self, index: np.ndarray | slice) -> SampleSet:
        """The samples at ``index`` (integer or boolean)."""
        arrays = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "feature_names"}
        return SampleSet(**arrays, feature_names=self.feature_names)

    @classmethod
    def empty(cls, n_features: int, feature_names: Sequence[str] | None = None) -> SampleSet:
        """A set of zero samples with ``n_features`` features."""
        return cls(
            X=np.empty((0, n_features), np.float32),
            y=np.empty(0, np.uint8),
            weight=np.empty(0, np.float32),
            box=np.empty(0, np.int32),
            row=np.empty(0, np.int32),
            col=np.empty(0, np.int32),
            feature_names=None if feature_names is None else tuple(feature_names),
        )

    @classmethod
    def concatenate(cls, sets: Sequence[SampleSet]) -> SampleSet:
        """All samples of ``sets`` (same features), in order."""
        if not sets:
            raise ValueError("no sample sets to concatenate")
        n_features = {s.n_features for s in sets}
        if len(n_features) != 1:
            raise ValueError(f"sample sets have different feature counts: {sorted(n_features)}")
        names = {s.feature_names for s in sets} - {None}
        if len(names) > 1:
            raise ValueError("sample sets have different feature names")
        arrays = {
            f.name: np.concatenate([getattr(s, f.name) for s in sets])
            for f in fields(cls)
            if f.name != "feature_names"
        }
        return cls(**arrays, feature_names=names.pop() if names else None)


def _reference_mask(mask: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A (4H, 4W) bool mask from (4H, 4W[, 1]) bool or 0/1 values; ``ValueError`` otherwise."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape} (4x the features) or {(*shape, 1)}, got {mask.shape}"
        )
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating) and np.isnan(mask).any():
        raise ValueError(f"{name} holds NaN labels: give a boolean mask")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{name} must hold 0/1 values, got {np.unique(mask)[:5]}")
    return mask.astype(bool)


def _choose(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` flat indices where ``candidates`` is True, uniformly without replacement."""
    index = np.flatnonzero(candidates)
    if index.size <= n:
        return index
    return index[rng.choice(index.size, size=n, replace=False)]


def sample_box(
    features: np.ndarray | FeatureUpsampler,
    cultivated: np.ndarray,
    not_declared: np.ndarray | None = None,
    *,
    n_per_box: int = 20000,
    strategy: Strategy = "balanced",
    weights: bool | np.ndarray | None = None,
    interpolation: Interpolation = "bicubic",
    seed: int = 0,
    box_id: int = 0,
    feature_names: Sequence[str] | None = None,
) -> SampleSet:
    """Up to ``n_per_box`` labelled 2.5 m pixels of one box, with their interpolated 10 m features.

    :param features: (H, W, F) 10 m features (or a :class:`FeatureUpsampler` of them).
    :param cultivated: (4H, 4W) or (4H, 4W, 1) reference mask, True = cultivated.
    :param not_declared: same shape, True = excluded (never sampled); None = nothing excluded.
    :param strategy: ``"balanced"`` (half per class, each capped by availability) or ``"proportional"``.
    :param weights: None/False: weight 1; True: the challenge weight map; an array: per-pixel weights
        of shape (4H, 4W[, 1]). Pixels of weight 0 are not sampled.
    :param interpolation: ``"bicubic"`` (default, see the module docstring) or ``"nearest"``.
    :param seed: with ``box_id``, seeds the draw (same inputs and seeds, same samples).
    :param box_id: non-negative box number stored with the samples.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(n_per_box, bool) or int(n_per_box) != n_per_box or n_per_box < 1:
        raise ValueError(f"n_per_box must be a positive integer, got {n_per_box!r}")
    if box_id < 0 or seed < 0:
        raise ValueError(f"seed and box_id must be non-negative, got {seed}, {box_id}")
    upsampler = features if isinstance(features, FeatureUpsampler) else FeatureUpsampler(features)
    height, width, n_features = upsampler.shape
    shape = (height * upsampler.scale, width * upsampler.scale)
    truth = _reference_mask(cultivated, "cultivated", shape)
    eligible = np.ones(shape, dtype=bool)
    excluded = None
    if not_declared is not None:
        excluded = _reference_mask(not_declared, "not_declared", shape)
        eligible &= ~excluded

    pixel_weights = None
    if isinstance(weights, np.ndarray):
        pixel_weights = np.asarray(weights, dtype=np.float32)
        if pixel_weights.ndim == 3 and pixel_weights.shape[-1] == 1:
            pixel_weights = pixel_weights[..., 0]
        if pixel_weights.shape != shape:
            raise ValueError(f"weights must have shape {shape}, got {pixel_weights.shape}")
        if not np.isfinite(pixel_weights).all() or (pixel_weights < 0).any():
            raise ValueError("weights must be finite and non-negative")
    elif weights is True:
        pixel_weights = weight_map(truth, excluded)
    elif weights not in (None, False):
        raise ValueError(f"weights must be None, a bool or an array, got {type(weights).__name__}")
    if pixel_weights is not None:
        eligible &= pixel_weights > 0

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(box_id)]))
    n = int(n_per_box)
    if strategy == "balanced":
        n_pos = n // 2
        chosen = np.concatenate(
            [_choose(eligible & truth, n_pos, rng), _choose(eligible & ~truth, n - n_pos, rng)]
        )
    else:
        chosen = _choose(eligible, n, rng)
    chosen.sort()
    rows, cols = np.divmod(chosen, shape[1])
    names = None if feature_names is None else tuple(feature_names)
    if not chosen.size:
        LOGGER.warning("box %d: no eligible labelled pixel to sample", box_id)
        return SampleSet.empty(n_features, names)
    samples = SampleSet(
        X=upsampler.at(rows, cols, interpolation),
        y=truth.reshape(-1)[chosen].astype(np.uint8),
        weight=(
            np.ones(chosen.size, np.float32)
            if pixel_weights is None
            else pixel_weights.reshape(-1)[chosen].astype(np.float32)
        ),
        box=np.full(chosen.size, box_id, np.int32),
        row=rows.astype(np.int32),
        col=cols.astype(np.int32),
        feature_names=names,
    )
    LOGGER.debug("box %d: sampled %s (not cultivated, cultivated)", box_id, samples.class_counts().tolist())
    return samples


def sample_eopatch(
    eopatch: EOPatch,
    features_feature: tuple[FeatureType, str] = STATS5X5,
    *,
    cultivated_feature: tuple[FeatureType, str] = contract.CULTIVATED,
    not_declared_feature: tuple[FeatureType, str] | None = contract.NOT_DECLARED,
    **kwargs: Any,
) -> SampleSet:
    """:func:`sample_box` on an EOPatch's features and reference masks (feature names from
    ``meta_info["<NAME>_FEATURES"]`` when present); ``kwargs`` go to :func:`sample_box`."""
    for feature in (features_feature, cultivated_feature):
        if feature not in eopatch:
            raise ValueError(f"the EOPatch has no {feature[0].value}/{feature[1]}")
    not_declared = None
    if not_declared_feature is not None and not_declared_feature in eopatch:
        not_declared = eopatch[not_declared_feature]
    names = eopatch.meta_info.get(f"{features_feature[1]}_FEATURES")
    kwargs.setdefault("feature_names", names)
    return sample_box(eopatch[features_feature], eopatch[cultivated_feature], not_declared, **kwargs)


class _Reservoir:
    """Bottom-k reservoir of at most ``capacity`` samples, updated in place."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.store: SampleSet | None = None
        self.keys = np.empty(0, np.float64)
        self.size = 0
        self.seen = 0

    def add(self, samples: SampleSet, keys: np.ndarray) -> None:
        self.seen += len(samples)
        if self.capacity == 0 or not len(samples):
            return
        if self.store is None:
            self.store = SampleSet(
                X=np.empty((self.capacity, samples.n_features), np.float32),
                y=np.empty(self.capacity, np.uint8),
                weight=np.empty(self.capacity, np.float32),
                box=np.empty(self.capacity, np.int32),
                row=np.empty(self.capacity, np.int32),
                col=np.empty(self.capacity, np.int32),
                feature_names=samples.feature_names,
            )
            self.keys = np.empty(self.capacity, np.float64)
        free = min(self.capacity - self.size, len(samples))
        if free:
            self._put(np.arange(self.size, self.size + free), samples, np.arange(free), keys)
            self.size += free
        if free == len(samples):
            return
        rest = np.arange(free, len(samples))
        rest = rest[keys[rest] < self.keys.max()]  # only keys below the current k-th smallest can enter
        if not rest.size:
            return
        merged = np.concatenate([self.keys, keys[rest]])
        kept = np.argpartition(merged, self.capacity - 1)[: self.capacity]
        incoming = np.sort(kept[kept >= self.capacity]) - self.capacity
        evicted = np.setdiff1d(np.arange(self.capacity), kept, assume_unique=True)
        self._put(evicted, samples, rest[incoming], keys)

    def _put(self, slots: np.ndarray, samples: SampleSet, index: np.ndarray, keys: np.ndarray) -> None:
        for f in fields(SampleSet):
            if f.name != "feature_names":
                getattr(self.store, f.name)[slots] = getattr(samples, f.name)[index]
        self.keys[slots] = keys[index]

    def result(self) -> SampleSet | None:
        return None if self.store is None else self.store.subset(slice(0, self.size))

    @property
    def nbytes(self) -> int:
        return (0 if self.store is None else self.store.nbytes) + self.keys.nbytes


class SampleAccumulator:
    """A uniform random subset of at most ``max_samples`` of all samples added, in bounded memory.

    ``strategy="balanced"``: at most ``max_samples // 2`` cultivated and the rest not cultivated, each a
    uniform subset of its class; ``"proportional"``: one uniform subset of everything. See the module
    docstring (bottom-k sampling, seeded).
    """

    def __init__(self, max_samples: int, strategy: Strategy = "balanced", seed: int = 0) -> None:
        if isinstance(max_samples, bool) or int(max_samples) != max_samples or max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.max_samples = int(max_samples)
        self.strategy = strategy
        self.rng = np.random.default_rng(seed)
        self.n_features: int | None = None
        self.feature_names: tuple[str, ...] | None = None
        if strategy == "balanced":
            positives = self.max_samples // 2
            self.reservoirs: dict[int | None, _Reservoir] = {
                0: _Reservoir(self.max_samples - positives),
                1: _Reservoir(positives),
            }
        else:
            self.reservoirs = {None: _Reservoir(self.max_samples)}

    def add(self, samples: SampleSet) -> None:
        """Offer ``samples`` (e.g. one box's :func:`sample_box`) to the subset."""
        if self.n_features is None:
            self.n_features = samples.n_features
        elif samples.n_features != self.n_features:
            raise ValueError(f"samples have {samples.n_features} features, earlier ones {self.n_features}")
        if samples.feature_names is not None:
            if self.feature_names is not None and samples.feature_names != self.feature_names:
                raise ValueError("samples have different feature names than earlier ones")
            self.feature_names = samples.feature_names
        keys = self.rng.random(len(samples))
        for label, reservoir in self.reservoirs.items():
            take = slice(None) if label is None else np.flatnonzero(samples.y == label)
            reservoir.add(samples.subset(take), keys[take])

    def __len__(self) -> int:
        return sum(r.size for r in self.reservoirs.values())

    @property
    def n_seen(self) -> int:
        """Number of samples offered so far."""
        return sum(r.seen for r in self.reservoirs.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (bounded by ``max_samples``)."""
        return sum(r.nbytes for r in self.reservoirs.values())

    def result(self) -> SampleSet:
        """The kept samples, ordered by box, row and column."""
        parts = [s for s in (r.result() for r in self.reservoirs.values()) if s is not None]
        if not parts:
            return SampleSet.empty(self.n_features or 0, self.feature_names)
        merged = SampleSet.concatenate(parts)
        merged.feature_names = self.feature_names
        return merged.subset(np.lexsort((merged.col, merged.row, merged.box)))

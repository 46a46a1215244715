"""Model inputs and targets of the deep models: frame selection, percentile normalisation, targets.

* :class:`FrameSelectionTask`: eo-learn ``SimpleFilterTask`` keeping the ``n_frames`` frames with the
  highest valid fraction (the least cloudy), in time order; ``None`` keeps every frame.
* :class:`PercentileNormaliser`: per-channel 3rd/97th percentiles of the valid observations of the
  training boxes (FG-UNet), fitted in bounded memory, stored as plain lists of floats.
* :class:`TensorStackTask`: the cloud-masked, normalised float32 stack ``(T, H, W, C)`` in ``[0, 1]``
  with invalid observations set to 0.
* :func:`targets`: the 2.5 m training target ``y`` (CULTIVATED) and loss weight (challenge weight map
  or ones, 0 on NOT_DECLARED).

A full pipeline from a stored box is ``ReflectanceTask -> ValidMaskTask -> FrameSelectionTask ->
TensorStackTask``; :mod:`s2agri.models.datasets` does the same per training patch and gives the same
numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature, FeaturesSpecification
from eolearn.features import SimpleFilterTask

from . import contract
from .masks import REFLECTANCE, VALID
from .weights import weight_map

LOGGER = logging.getLogger(__name__)

STACK = (FeatureType.DATA, "STACK")

WeightsKind = Literal["challenge", "none"]
WEIGHTS_KINDS: tuple[str, ...] = ("challenge", "none")

#: Default percentiles of :class:`PercentileNormaliser` (FG-UNet: 3rd and 97th per channel).
Q_LOW, Q_HIGH = 3.0, 97.0
#: Default number of valid observations (rows of C channels) kept to compute the percentiles:
#: 1 M rows x 12 channels x 4 bytes = 48 MB, plus as many float64 keys (8 MB).
MAX_VALUES = 1_000_000
#: Observations scanned at once by :meth:`PercentileNormaliser.fit` (at least ``max_values``).
FIT_CHUNK = 1 << 20


def _name(feature: Feature) -> str:
    return f"{feature[0].value}/{feature[1]}"


def _check_n_frames(n_frames: int | None) -> int | None:
    if n_frames is None:
        return None
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames={n_frames!r}: give a positive number of frames or None for all")
    return int(n_frames)


def select_frames(valid: np.ndarray, n_frames: int | None) -> np.ndarray:
    """Sorted indices of the ``n_frames`` frames of ``valid`` (T, ...) with the highest valid fraction.

    Ties go to the earlier frame; the indices are returned in time order. ``None`` or ``n_frames >= T``
    gives every frame (a box with fewer frames than asked keeps them all: T < n_frames).
    """
    n_frames = _check_n_frames(n_frames)
    valid = np.asarray(valid)
    if valid.ndim < 1 or valid.shape[0] == 0:
        raise ValueError("the valid mask has no frames: nothing to select, check the data source")
    n_total = valid.shape[0]
    if n_frames is None or n_frames >= n_total:
        return np.arange(n_total)
    per_frame = valid.reshape(n_total, -1)
    fractions = (
        per_frame.mean(axis=1, dtype=np.float64) if per_frame.shape[1] else np.zeros(n_total, np.float64)
    )
    best = np.argsort(-fractions, kind="stable")[:n_frames]  # stable: ties keep time order
    return np.sort(best)


def _keep_every_frame(_frame: np.ndarray) -> bool:
    return True


class FrameSelectionTask(SimpleFilterTask):
    """Keeps the ``n_frames`` least cloudy frames (highest fraction of ``valid_feature``), in time order.

    ``n_frames=None`` keeps every frame. A box with fewer than ``n_frames`` frames keeps all of them,
    so the result then has fewer than ``n_frames`` frames (:class:`s2agri.models.datasets.PatchDataset`
    pads with zero frames). Like its parent, it returns a new EOPatch with ``filter_features`` (default:
    all), temporal features and timestamps filtered consistently; SPInet's "20 frames, cloud-free first"
    is ``FrameSelectionTask(20)``.
    """

    def __init__(
        self,
        n_frames: int | None = None,
        valid_feature: Feature = VALID,
        filter_features: FeaturesSpecification = ...,
    ):
        self.n_frames = _check_n_frames(n_frames)
        super().__init__(valid_feature, _keep_every_frame, filter_features)

    def frame_indices(self, valid: np.ndarray) -> np.ndarray:
        """The kept frame indices (sorted) for a (T, H, W, 1) valid mask: :func:`select_frames`."""
        return select_frames(valid, self.n_frames)

    def _get_filtered_indices(self, feature_data: Iterable) -> list[int]:
        return self.frame_indices(np.asarray(feature_data)).tolist()

    def execute(self, eopatch: EOPatch) -> EOPatch:
        if self.feature not in eopatch:
            raise ValueError(
                f"the EOPatch has no {_name(cast(Feature, self.feature))}: run ValidMaskTask first"
            )
        return super().execute(eopatch)


def _rows_and_mask(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` as (N, C) rows and ``valid`` as an (N,) mask; ``valid`` is (...) or (..., 1)."""
    values = np.asarray(values)
    valid = np.asarray(valid)
    if values.ndim < 2:
        raise ValueError(f"values have shape {values.shape}: expected (..., C) with channels last")
    if valid.shape == (*values.shape[:-1], 1):
        valid = valid[..., 0]
    if valid.shape != values.shape[:-1]:
        raise ValueError(
            f"valid has shape {valid.shape}, values {values.shape}: give a mask of shape {values.shape[:-1]} (or with a last axis of 1)"
        )
    return values.reshape(-1, values.shape[-1]), valid.reshape(-1).astype(bool, copy=False)


class PercentileNormaliser:
    """Per-channel percentile normalisation ``(v - low) / (high - low)`` clipped to ``[0, 1]`` (FG-UNet).

    :meth:`fit` computes the ``q_low``/``q_high`` percentiles (numpy's default linear method) per
    channel over the valid observations of every (values, valid) pair it is given, e.g. one pair per
    training box or per frame (:func:`s2agri.models.box_inputs.box_observations`). Memory is bounded: a
    seeded uniform random sample of at most ``max_values`` valid observations (rows of C channels) over
    everything seen is kept, by bottom-k sampling (each valid observation gets a uniform random key, the
    ``max_values`` smallest keys are kept). Every observation has the same chance to be kept whatever
    its box, so the percentiles estimate those of all valid observations; when there are at most
    ``max_values`` of them all are kept and the percentiles are exactly numpy's. Same seed, same
    inputs in the same order: same result.

    :meth:`to_dict` / :meth:`from_dict` use plain Python lists, floats, ints and strings only, so the
    dict can be stored in a torch checkpoint loaded with ``weights_only=True``. A channel whose two
    percentiles are equal gets a span of 1 (its values then map to 0 at or below ``low``, 1 above).
    """

    def __init__(
        self,
        q_low: float = Q_LOW,
        q_high: float = Q_HIGH,
        *,
        max_values: int = MAX_VALUES,
        seed: int = 0,
        low: Iterable[float] | None = None,
        high: Iterable[float] | None = None,
    ) -> None:
        if not 0.0 <= q_low < q_high <= 100.0:
            raise ValueError(f"percentiles ({q_low}, {q_high}) are invalid: give 0 <= q_low < q_high <= 100")
        if isinstance(max_values, bool) or int(max_values) != max_values or max_values < 1:
            raise ValueError(f"max_values={max_values!r}: give a positive number of observations")
        self.q_low = float(q_low)
        self.q_high = float(q_high)
        self.max_values = int(max_values)
        self.seed = int(seed)
        self.n_seen = 0  #: valid observations seen by the last fit
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        if (low is None) != (high is None):
            raise ValueError("give both low and high percentiles, or neither")
        if low is not None and high is not None:
            self._set(np.asarray(list(low), np.float64), np.asarray(list(high), np.float64))

    def _set(self, low: np.ndarray, high: np.ndarray) -> None:
        if low.ndim != 1 or low.shape != high.shape or low.size == 0:
            raise ValueError(
                f"low and high have shapes {low.shape} and {high.shape}: give one value per channel each"
            )
        if not (np.isfinite(low).all() and np.isfinite(high).all()) or (high < low).any():
            raise ValueError("percentiles must be finite with high >= low in every channel")
        self.low = low.astype(np.float32)
        self.high = high.astype(np.float32)
        span = self.high - self.low
        constant = span <= 0
        if constant.any():
            LOGGER.warning(
                "channels %s have equal percentiles: span set to 1", np.flatnonzero(constant).tolist()
            )
        self._span = np.where(constant, np.float32(1), span).astype(np.float32)

    @property
    def fitted(self) -> bool:
        return self.low is not None

    @property
    def n_channels(self) -> int:
        if self.low is None:
            raise ValueError("the normaliser is not fitted: call fit() or from_dict() first")
        return int(self.low.size)

    def fit(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> PercentileNormaliser:
        """Fits the percentiles to ``(values, valid)`` pairs; returns ``self``.

        ``values`` is (..., C) (e.g. reflectance (T, H, W, C) of one box, or (H, W, C) of one frame),
        ``valid`` a boolean mask of its leading shape (or with a trailing axis of 1). Only observations
        with ``valid`` True count. Raises a ``ValueError`` when there is none, or when a kept one is not
        finite.
        """
        rng = np.random.default_rng(self.seed)
        store: np.ndarray | None = None
        keys = np.empty(0, np.float64)
        threshold = np.inf  # the max_values-th smallest key once the store is full
        n_channels: int | None = None
        self.n_seen = 0
        for values, valid in pairs:
            rows, mask = _rows_and_mask(values, valid)
            if n_channels is None:
                n_channels = rows.shape[1]
                store = np.empty((0, n_channels), np.float32)
            elif rows.shape[1] != n_channels:
                raise ValueError(f"values have {rows.shape[1]} channels, earlier ones {n_channels}")
            chunk = max(self.max_values, FIT_CHUNK)
            for start in range(0, len(rows), chunk):  # bounds the store to 2 x chunk rows
                index = start + np.flatnonzero(mask[start : start + chunk])
                self.n_seen += index.size
                if not index.size:
                    continue
                new_keys = rng.random(index.size)
                take = new_keys < threshold
                index, new_keys = index[take], new_keys[take]
                store = np.concatenate([store, rows[index].astype(np.float32)])
                keys = np.concatenate([keys, new_keys])
                if keys.size > self.max_values:
                    kept = np.sort(np.argpartition(keys, self.max_values - 1)[: self.max_values])
                    store, keys = store[kept], keys[kept]
                    threshold = float(keys.max())
        if store is None or not len(store):
            raise ValueError("no valid observation to fit the percentiles: check the valid masks and boxes")
        if not np.isfinite(store).all():
            raise ValueError("valid observations hold NaN or infinite values: mask them as invalid")
        low, high = np.percentile(store, [self.q_low, self.q_high], axis=0)
        self._set(np.asarray(low, np.float64), np.asarray(high, np.float64))
        LOGGER.info(
            "percentiles from %d of %d valid observations: low %s, high %s",
            len(store),
            self.n_seen,
            np.round(low, 4).tolist(),
            np.round(high, 4).tolist(),
        )
        return self

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``(values - low) / (high - low)`` per channel (last axis), clipped to [0, 1], float32."""
        if self.low is None:
            raise ValueError("the normaliser is not fitted: call fit() or from_dict() first")
        values = np.asarray(values)
        if values.ndim < 1 or values.shape[-1] != self.low.size:
            raise ValueError(
                f"values have shape {values.shape}: expected {self.low.size} channels on the last axis"
            )
        out = values.astype(np.float32)  # a copy: updated in place
        out -= self.low
        out /= self._span
        return np.clip(out, 0.0, 1.0, out=out)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python state (lists of floats): safe in ``torch.save`` / ``torch.load(weights_only=True)``."""
        if self.low is None or self.high is None:
            raise ValueError("the normaliser is not fitted: call fit() before to_dict()")
        return {
            "kind": "percentile",
            "q_low": self.q_low,
            "q_high": self.q_high,
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "max_values": self.max_values,
            "seed": self.seed,
            "n_seen": int(self.n_seen),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> PercentileNormaliser:
        """The normaliser :meth:`to_dict` described; a ``ValueError`` names a missing key."""
        missing = {"q_low", "q_high", "low", "high"} - set(state)
        if missing:
            raise ValueError(
                f"normaliser state lacks {sorted(missing)}: give a PercentileNormaliser.to_dict()"
            )
        normaliser = cls(
            state["q_low"],
            state["q_high"],
            max_values=state.get("max_values", MAX_VALUES),
            seed=state.get("seed", 0),
            low=state["low"],
            high=state["high"],
        )
        normaliser.n_seen = int(state.get("n_seen", 0))
        return normaliser

    def __repr__(self) -> str:
        state = "unfitted" if self.low is None else f"{self.low.size} channels"
        return f"PercentileNormaliser(q_low={self.q_low}, q_high={self.q_high}, {state})"


def normalised_stack(
    reflectance: np.ndarray, valid: np.ndarray, normaliser: PercentileNormaliser
) -> np.ndarray:
    """``normaliser.apply(reflectance)`` (float32, (..., C)) with invalid observations set to 0.

    ``valid`` has the leading shape of ``reflectance``, with or without a trailing axis of 1.
    """
    valid = np.asarray(valid)
    if valid.shape == reflectance.shape[:-1]:
        valid = valid[..., None]
    if valid.shape != (*reflectance.shape[:-1], 1):
        raise ValueError(
            f"valid has shape {valid.shape}, reflectance {reflectance.shape}: give masks of shape (..., 1)"
        )
    stack = normaliser.apply(reflectance)
    np.copyto(stack, np.float32(0), where=~valid.astype(bool, copy=False))
    return stack


class TensorStackTask(EOTask):
    """The cloud-masked normalised stack (float32, T×H×W×C in [0, 1]) into ``output`` (``data/STACK``).

    Each channel is normalised with ``normaliser`` (a fitted :class:`PercentileNormaliser`), then
    every observation where ``valid`` is False is set to 0 (so 0 means "no observation" as well as
    "at or below the low percentile").
    """

    def __init__(
        self,
        normaliser: PercentileNormaliser,
        reflectance: Feature = REFLECTANCE,
        valid: Feature = VALID,
        output: Feature = STACK,
    ):
        if not isinstance(normaliser, PercentileNormaliser) or not normaliser.fitted:
            raise ValueError(
                "normaliser must be a fitted PercentileNormaliser: fit it or load it with from_dict()"
            )
        self.normaliser = normaliser
        self.reflectance = self.parse_feature(reflectance, allowed_feature_types=[FeatureType.DATA])
        self.valid = self.parse_feature(valid, allowed_feature_types=[FeatureType.MASK])
        self.output = self.parse_feature(output, allowed_feature_types=[FeatureType.DATA])

    def execute(self, eopatch: EOPatch) -> EOPatch:
        for feature in (self.reflectance, self.valid):
            if feature not in eopatch:
                raise ValueError(
                    f"the EOPatch has no {_name(feature)}: run ReflectanceTask and ValidMaskTask first"
                )
        reflectance = np.asarray(eopatch[self.reflectance])
        valid = np.asarray(eopatch[self.valid])
        if reflectance.ndim != 4 or valid.shape != (*reflectance.shape[:-1], 1):
            raise ValueError(
                f"{_name(self.reflectance)} has shape {reflectance.shape}, {_name(self.valid)} {valid.shape}: "
                "expected (T, H, W, C) and (T, H, W, 1)"
            )
        eopatch[self.output] = normalised_stack(reflectance, valid, self.normaliser)
        return eopatch


def _reference(eopatch: EOPatch, feature: Feature) -> np.ndarray:
    array = np.asarray(eopatch[feature])
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{_name(feature)} has shape {array.shape}: expected (4H, 4W, 1)")
    return array.astype(bool, copy=False)


def targets(
    eopatch: EOPatch,
    weights: WeightsKind = "challenge",
    *,
    cultivated: Feature = contract.CULTIVATED,
    not_declared: Feature | None = contract.NOT_DECLARED,
) -> tuple[np.ndarray, np.ndarray]:
    """Training target and loss weight of one box at 2.5 m: ``(y, weight)``, both float32 (4H, 4W).

    ``y`` is 1 where CULTIVATED, else 0. ``weight`` is the challenge weight map
    (:func:`s2agri.tasks.weights.weight_map`: small parcels and their rings weigh more, 0 on the box
    border) with ``weights="challenge"``, or ones with ``weights="none"``; either way it is 0 on
    NOT_DECLARED pixels, which the loss then ignores. A box without ``not_declared`` (or
    ``not_declared=None``) has nothing excluded.
    """
    if weights not in WEIGHTS_KINDS:
        raise ValueError(f"weights={weights!r}: use one of {WEIGHTS_KINDS}")
    if cultivated not in eopatch:
        raise ValueError(f"the EOPatch has no {_name(cultivated)}: targets need a training box")
    truth = _reference(eopatch, cultivated)
    excluded = None
    if not_declared is not None and not_declared in eopatch:
        excluded = _reference(eopatch, not_declared)
        if excluded.shape != truth.shape:
            raise ValueError(
                f"{_name(not_declared)} has shape {excluded.shape}, {_name(cultivated)} {truth.shape}: give masks of one shape"
            )
    elif not_declared is not None:
        LOGGER.warning("%s missing: no pixel excluded from the loss", _name(not_declared))
    y = truth.astype(np.float32)
    if weights == "challenge":
        weight = weight_map(truth, excluded).astype(np.float32, copy=False)
    else:
        weight = np.ones(truth.shape, np.float32)
        if excluded is not None:
            weight[excluded] = 0
    return y, weight

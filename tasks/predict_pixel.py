"""2.5 m prediction of a box with a pixel classifier (LightGBM / random forest on 5x5 statistics).

:class:`PixelModelPredictTask` turns a box's 10 m feature stack (``data_timeless/STATS5X5``, (H, W, F))
into the 2.5 m probability map and writes it with :func:`s2agri.tasks.prediction.write_prediction`
(``PRED_PROBA``, ``PRED_CULTIVATED``, ``meta_info["PRED_MODEL"]``). Two modes:

* ``"proba-upsample"`` (default): the model predicts at 10 m (H W rows, NaN features as they are) and
  the probability map is upsampled x4 with ``cv2.INTER_CUBIC`` and clipped to [0, 1].
* ``"refine"`` (default): proba-upsample, then the 2.5 m pixels whose upsampled probability lies
  within ``threshold ± margin`` are predicted again from their bicubic features, as in
  feature-upsample; elsewhere the map is decided at 10 m already. With the seasonal features
  (:mod:`s2agri.tasks.seasonal`) feature-upsample scores far higher than proba-upsample (pooled
  weighted MCC 0.758 vs 0.711 on 4 simulated 250 px tuning boxes of seeds 0 and 1), because a 10 m
  probability cannot place the 5 m gaps between adjacent parcels; refine with margin 0.3 scores 0.756
  predicting 24 % of the pixels again (margin 0.2: 0.752 and 14 %; 0.4: 0.758 and 43 %). Hold-out
  scores and seconds: ``benchmarks/results/seasonal.json``.
* ``"feature-upsample"``: the features are upsampled x4 bicubically (OpenCV ``INTER_CUBIC``, NaN
  handling of :class:`s2agri.models.sampling.FeatureUpsampler`) in row strips and the model predicts
  every 2.5 m pixel: 16 H W rows, in chunks of ``chunk_pixels`` rows so that memory stays bounded
  (about ``chunk_pixels * F * 4`` bytes: 100 MB for F = 96). These are exactly the features the
  training samples of :mod:`s2agri.models.sampling` are drawn from.

Why proba-upsample was the default of the 5x5 statistics: on a simulated 500 x 500 box (T = 28, F = 96; models trained on 2 x 50,000 balanced
bicubic samples of two other boxes; 2 shared cores), feature-upsample costs 14x (LightGBM 300 trees:
77 s vs 5.4 s) and 13x (RF 100 trees: 29.9 s vs 2.3 s) the time for the same score (MCC Mask 0.619 vs
0.618 LightGBM, 0.599 vs 0.599 RF); the binary maps agree on 97.5 % (LightGBM) and 98.2 % (RF) of the
pixels, and (LightGBM) 87 % of the differing pixels lie within 2 px (5 m) of a class edge of the
map, 95 % within 4 px (one 10 m pixel): the modes differ by small shifts of the edges. Training on 10 m (nearest) features
to match proba-upsample exactly scored lower (0.615), so training keeps bicubic 2.5 m samples.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import cv2
import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from s2agri.models.registry import create_model, model_summary
from s2agri.models.sampling import STATS5X5, FeatureUpsampler, SampleSet

from . import contract
from .outputs import feature_array, write_prediction

LOGGER = logging.getLogger(__name__)

Mode = Literal["refine", "proba-upsample", "feature-upsample"]
MODES: tuple[str, ...] = ("refine", "proba-upsample", "feature-upsample")
#: The feature-upsample score for about half its time with the seasonal features (module docstring).
DEFAULT_MODE: Mode = "refine"
#: Probability margin around the threshold inside which ``refine`` predicts every 2.5 m pixel.
DEFAULT_REFINE_MARGIN = 0.3
#: Rows per model call (bounds the memory of a prediction).
CHUNK_PIXELS = 2**18


def _predict_rows(model: Any, X: np.ndarray, chunk_pixels: int) -> np.ndarray:
    """``model.predict_proba`` of (N, F) rows in chunks; (N,) float32."""
    out = np.empty(X.shape[0], dtype=np.float32)
    for start in range(0, X.shape[0], chunk_pixels):
        out[start : start + chunk_pixels] = model.predict_proba(X[start : start + chunk_pixels])
    return out


def predict_proba_map(
    model: Any,
    features: np.ndarray,
    mode: Mode = DEFAULT_MODE,
    *,
    chunk_pixels: int = CHUNK_PIXELS,
    scale: int = contract.SCALE,
    threshold: float = 0.5,
    margin: float = DEFAULT_REFINE_MARGIN,
) -> np.ndarray:
    """The (scale H, scale W) float32 probability map in [0, 1] of (H, W, F) 10 m ``features``.

    ``model`` has ``predict_proba((N, F)) -> (N,)`` (a :class:`s2agri.models.baselines.PixelClassifier`);
    ``threshold`` and ``margin`` choose the pixels that ``refine`` predicts at 2.5 m.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if chunk_pixels < 1:
        raise ValueError(f"chunk_pixels must be positive, got {chunk_pixels}")
    features = np.asarray(features)
    if features.ndim != 3 or min(features.shape) == 0:
        raise ValueError(f"features must have shape (H, W, F) with no empty axis, got {features.shape}")
    height, width, n_features = features.shape
    if mode in ("proba-upsample", "refine"):
        rows = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, n_features)
        proba = _predict_rows(model, rows, chunk_pixels).reshape(height, width)
        up = cv2.resize(proba, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC)
        np.clip(up, 0.0, 1.0, out=up)
        if mode == "refine":
            _refine(model, FeatureUpsampler(features, scale), up, threshold, margin, chunk_pixels)
        return up

    upsampler = FeatureUpsampler(features, scale)
    out = np.empty((height * scale, width * scale), dtype=np.float32)
    strip = max(1, chunk_pixels // (scale * scale * width))
    for start in range(0, height, strip):
        stop = min(height, start + strip)
        block = upsampler.rows(start, stop)
        proba = _predict_rows(model, block.reshape(-1, n_features), chunk_pixels)
        out[start * scale : stop * scale] = proba.reshape(block.shape[:2])
    return np.clip(out, 0.0, 1.0, out=out)


def _refine(
    model: Any,
    upsampler: FeatureUpsampler,
    out: np.ndarray,
    threshold: float,
    margin: float,
    chunk_pixels: int,
) -> None:
    """Predict again, in place in ``out``, the 2.5 m pixels within ``threshold ± margin`` from their features."""
    rows, cols = np.nonzero(np.abs(out - np.float32(threshold)) < margin)
    for start in range(0, rows.size, chunk_pixels):
        r, c = rows[start : start + chunk_pixels], cols[start : start + chunk_pixels]
        out[r, c] = np.clip(model.predict_proba(upsampler.at(r, c)), 0.0, 1.0)
    LOGGER.debug(
        "refine: %.1f %% of the 2.5 m pixels predicted from their features", 100 * rows.size / out.size
    )


class PixelModelPredictTask(EOTask):
    """Predict a box's 2.5 m cultivated-land map with a pixel classifier and store it.

    Writes ``data_timeless/PRED_PROBA`` (4H, 4W, 1) float32, ``mask_timeless/PRED_CULTIVATED``
    (``PRED_PROBA >= threshold``) and ``meta_info["PRED_MODEL"]`` (``model_name``, default the model's
    registry name) through :func:`s2agri.tasks.prediction.write_prediction`.
    """

    def __init__(
        self,
        model: Any,
        features_feature: Feature = STATS5X5,
        mode: Mode = DEFAULT_MODE,
        threshold: float = 0.5,
        *,
        model_name: str | None = None,
        chunk_pixels: int = CHUNK_PIXELS,
        refine_margin: float = DEFAULT_REFINE_MARGIN,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not callable(getattr(model, "predict_proba", None)):
            raise ValueError(f"model {type(model).__name__} has no predict_proba(X) method")
        self.model = model
        self.features_feature = self.parse_feature(
            features_feature, allowed_feature_types=[FeatureType.DATA_TIMELESS]
        )
        self.mode = mode
        self.threshold = threshold
        self.model_name = model_name or getattr(model, "name", None) or type(model).__name__
        self.chunk_pixels = chunk_pixels
        self.refine_margin = refine_margin

    def execute(self, eopatch: EOPatch) -> EOPatch:
        """Predict from ``features_feature`` and write the prediction features."""
        features = feature_array(eopatch, self.features_feature)
        start = time.perf_counter()
        proba = predict_proba_map(
            self.model,
            features,
            self.mode,
            chunk_pixels=self.chunk_pixels,
            threshold=self.threshold,
            margin=self.refine_margin,
        )
        LOGGER.info(
            "%s (%s): %dx%d box predicted in %.1f s",
            self.model_name,
            self.mode,
            *features.shape[:2],
            time.perf_counter() - start,
        )
        return write_prediction(
            eopatch,
            proba,
            self.model_name,
            self.threshold,
            reference_feature=self.features_feature,
        )


def train_pixel_model(
    name: str,
    samples: SampleSet,
    *,
    use_weights: bool = True,
    **model_kwargs: Any,
) -> Any:
    """Build registry model ``name`` with ``model_kwargs`` and fit it on ``samples``.

    ``use_weights`` passes ``samples.weight`` as ``sample_weight`` (all ones unless the samples were
    drawn with a weight map). Returns the fitted model; its summary is logged.
    """
    if not isinstance(samples, SampleSet):
        raise ValueError(f"samples must be a SampleSet, got {type(samples).__name__}")
    counts = samples.class_counts()
    if counts.min() == 0:
        raise ValueError(
            f"samples hold {counts[0]} not-cultivated and {counts[1]} cultivated pixels: need both"
        )
    model = create_model(name, **model_kwargs)
    start = time.perf_counter()
    model.fit(samples.X, samples.y, sample_weight=samples.weight if use_weights else None)
    summary = model_summary(model)
    LOGGER.info(
        "trained %s on %d samples (%d / %d) in %.1f s: %s nodes",
        name,
        len(samples),
        counts[0],
        counts[1],
        time.perf_counter() - start,
        summary["n_parameters"],
    )
    return model

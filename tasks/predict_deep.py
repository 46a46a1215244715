"""2.5 m prediction of a box with a deep segmenter (GCNN, U-Nets), tiled so memory stays bounded.

:class:`DeepModelPredictTask` takes the box's reflectance and validity (``data/REFLECTANCE``,
``mask/VALID``), keeps the frames the model was trained with (all, or the ``n_frames`` least cloudy
in time order, padded with empty frames as in training), normalises them with the training
percentiles, sets invalid observations to 0, and predicts the (4H, 4W) probabilities with
:func:`s2agri.models.inference.predict_tiled` (tiles with the model's halo, so the result equals
whole-box inference for models with an exact halo). With ``months`` (``convlstm``, ``convstar``)
the model input is the per-pixel monthly medians of those calendar months instead of the frames
(:func:`s2agri.tasks.monthly.monthly_inputs`, as in training). ``tta`` averages the predictions of
the box's dihedral transforms (:data:`s2agri.models.inference.TTA_TRANSFORMS`). It writes the probabilities with
:func:`s2agri.tasks.prediction.write_prediction`. A field-delineation model (extent, boundary and
distance outputs, :mod:`s2agri.models.field_delineation`) also writes ``data_timeless/PRED_BOUNDARY``
and ``data_timeless/PRED_DISTANCE``, which :class:`s2agri.tasks.instances.InstanceSegmentationTask`
uses to split the fields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.core.types import Feature

from s2agri.models.inference import predict_tiled_outputs
from s2agri.models.names import TTAMode
from s2agri.tasks.masks import REFLECTANCE, VALID
from s2agri.tasks.monthly import monthly_inputs
from s2agri.tasks.outputs import PRED_BOUNDARY, PRED_DISTANCE, feature_array, write_prediction
from s2agri.tasks.tensors import PercentileNormaliser, normalised_stack, select_frames

LOGGER = logging.getLogger(__name__)


def model_input(
    reflectance: np.ndarray,
    valid: np.ndarray,
    normaliser: PercentileNormaliser,
    n_frames: int | None,
    *,
    months: Sequence[int] | None = None,
    timestamps: Sequence[Any] | None = None,
) -> np.ndarray:
    """(T, C, H, W) float32 model input of a box: selected frames, normalised, invalid = 0, padded to
    ``n_frames`` with empty frames when the box has fewer; with ``months``, the M monthly medians
    (``timestamps`` needed) instead of the frames."""
    valid = valid[..., 0] if valid.ndim == 4 else valid
    if months:
        if timestamps is None:
            raise ValueError("monthly medians need the timestamps of the frames")
        medians, observed = monthly_inputs(reflectance, valid, timestamps, months)
        stack = normalised_stack(medians, observed, normaliser)
        return np.ascontiguousarray(stack.transpose(0, 3, 1, 2))
    frames = select_frames(valid, n_frames)
    stack = normalised_stack(reflectance[frames], valid[frames], normaliser)  # (T, H, W, C)
    if n_frames is not None and stack.shape[0] < n_frames:
        pad = np.zeros((n_frames - stack.shape[0], *stack.shape[1:]), dtype=np.float32)
        stack = np.concatenate([stack, pad])
    return np.ascontiguousarray(stack.transpose(0, 3, 1, 2))


class DeepModelPredictTask(EOTask):
    """Predict PRED_PROBA / PRED_CULTIVATED of a box with a torch segmenter (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        normaliser: PercentileNormaliser,
        n_frames: int | None = None,
        threshold: float = 0.5,
        *,
        model_name: str | None = None,
        tile: int = 128,
        batch_size: int = 1,
        num_threads: int | None = None,
        reflectance_feature: Feature = REFLECTANCE,
        valid_feature: Feature = VALID,
        months: Sequence[int] | None = None,
        tta: TTAMode = "none",
    ):
        if not normaliser.fitted:
            raise ValueError("the normaliser is not fitted: load it from the model's checkpoint")
        self.model = model
        self.normaliser = normaliser
        self.n_frames = n_frames
        self.threshold = threshold
        self.model_name = model_name or getattr(model, "name", None) or type(model).__name__
        self.tile = tile
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.months = tuple(months) if months else None
        self.tta = tta
        self.reflectance_feature = self.parse_feature(
            reflectance_feature, allowed_feature_types=[FeatureType.DATA]
        )
        self.valid_feature = self.parse_feature(valid_feature, allowed_feature_types=[FeatureType.MASK])

    def execute(self, eopatch: EOPatch) -> EOPatch:
        reflectance = feature_array(eopatch, self.reflectance_feature)
        valid = feature_array(eopatch, self.valid_feature).astype(bool)
        x = model_input(
            reflectance,
            valid,
            self.normaliser,
            self.n_frames,
            months=self.months,
            timestamps=eopatch.timestamps if self.months else None,
        )
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        start = time.perf_counter()
        try:
            outputs = predict_tiled_outputs(
                self.model, x, tile=self.tile, batch_size=self.batch_size, progress=False, tta=self.tta
            )
        finally:
            torch.set_num_threads(threads)
        LOGGER.info(
            "%s: %dx%d box (T=%d, tta %s) predicted in %.1f s", self.model_name, *x.shape[2:], x.shape[0],
            self.tta, time.perf_counter() - start,
        )  # fmt: skip
        names = tuple(getattr(self.model, "output_names", ("extent",)))
        if len(names) != outputs.shape[0]:
            raise ValueError(
                f"{self.model_name} has outputs {names} but returned {outputs.shape[0]} channels"
            )
        for name, feature in (("boundary", PRED_BOUNDARY), ("distance", PRED_DISTANCE)):
            if name in names:
                eopatch[feature] = outputs[names.index(name)][..., None]
        return write_prediction(
            eopatch, outputs[0], self.model_name, self.threshold, reference_feature=self.reflectance_feature
        )

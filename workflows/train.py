"""``s2agri train``: fit a model on many boxes.

Pixel classifiers (LightGBM, RandomForest) are fitted here on sampled pixels; deep segmenters go to
:mod:`s2agri.workflows.train_deep` (tensor patches), parcel classifiers to
:mod:`s2agri.workflows.train_parcel` (zonal statistics of known parcels).

Each box runs the sampling EOWorkflow of :mod:`s2agri.workflows.mapping` under eo-learn's
EOExecutor and writes its samples to a ``.npz`` file; the files are then streamed into a
:class:`~s2agri.models.sampling.SampleAccumulator`, so memory is bounded by ``train.max_samples``
whatever the number of boxes. The model folder gets ``model.<ext>``, ``model_card.json``,
``config.json`` and the execution report.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2agri.models.sampling import SampleAccumulator, SampleSet
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.metrics import Confusion, mcc
from s2agri.tasks.predict_pixel import train_pixel_model
from s2agri.workflows.config import MappingConfig, dump_config, pixel_training
from s2agri.workflows.mapping import SAMPLES, SamplingWorkflow
from s2agri.workflows.model_store import save_trained
from s2agri.workflows.runs import (
    REPORT,
    execute,
    relative_folders,
)

LOGGER = logging.getLogger(__name__)


def load_samples(path: Path) -> SampleSet:
    """A :class:`SampleSet` from a ``.npz`` written by :class:`~s2agri.workflows.mapping.SamplePixelsTask`."""
    with np.load(path, allow_pickle=False) as data:
        names = tuple(str(n) for n in data["feature_names"]) or None
        return SampleSet(
            X=data["X"],
            y=data["y"],
            weight=data["weight"],
            box=data["box"],
            row=data["row"],
            col=data["col"],
            feature_names=names,
        )


#: Thresholds tried when choosing the decision threshold on validation boxes: a model fitted on fewer
#: boxes is more confident than the final one, so extreme choices would not carry over to it.
THRESHOLD_GRID = np.round(np.arange(0.2, 0.801, 0.01), 2)
#: Boxes needed to hold some out for the threshold (at least two remain to fit on).
MIN_BOXES_FOR_THRESHOLD = 3


def validation_boxes(names: Sequence[str], fraction: float) -> list[str]:
    """``round(fraction * n)`` boxes (at least 1, leaving at least 2) spread evenly over the sorted names;
    none when ``fraction`` is 0 or there are fewer than :data:`MIN_BOXES_FOR_THRESHOLD` boxes."""
    names = sorted(names)
    if fraction <= 0 or len(names) < MIN_BOXES_FOR_THRESHOLD:
        return []
    n_val = min(len(names) - 2, max(1, round(fraction * len(names))))
    picks = np.round(np.linspace(0, len(names) - 1, n_val + 2)[1:-1]).astype(int)
    return [names[i] for i in sorted(set(picks.tolist()))]


def box_sample_weights(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, and per sample the number of weighted 2.5 m pixels it stands for (its weight times its
    class population over its class's samples), of one box's ``.npz``: the box's weighted confusion is
    estimated without bias from balanced samples."""
    with np.load(path, allow_pickle=False) as data:
        y, weight, population = data["y"], data["weight"], data["population"]
    counts = np.bincount(y, minlength=2)[:2]
    scale = np.where(counts > 0, population / np.maximum(counts, 1), 0.0)
    return y, weight * scale[y], counts


def choose_threshold(y: np.ndarray, proba: np.ndarray, weight: np.ndarray) -> tuple[float, dict[str, float]]:
    """The threshold of :data:`THRESHOLD_GRID` with the highest weighted MCC of ``proba`` against ``y``
    (ties: the one closest to 0.5), and the estimated weighted MCC at it and at 0.5."""
    truth = y.astype(bool)
    scores = []
    for threshold in THRESHOLD_GRID:
        pred = proba >= threshold
        counts = Confusion(
            tp=float(weight[truth & pred].sum()),
            fp=float(weight[~truth & pred].sum()),
            fn=float(weight[truth & ~pred].sum()),
            tn=float(weight[~truth & ~pred].sum()),
        )
        scores.append(mcc(counts))
    scores_array = np.asarray(scores)
    best = np.flatnonzero(scores_array >= scores_array.max() - 1e-12)
    index = best[np.argmin(np.abs(THRESHOLD_GRID[best] - 0.5))]
    at_half = int(np.argmin(np.abs(THRESHOLD_GRID - 0.5)))
    return float(THRESHOLD_GRID[index]), {
        "weighted_mcc": round(scores[index], 4),
        "weighted_mcc_at_0.5": round(scores[at_half], 4),
    }


def _accumulate(paths: Sequence[Path], config: MappingConfig) -> tuple[SampleSet, int]:
    train = pixel_training(config)
    accumulator = SampleAccumulator(
        train.max_samples, "balanced" if train.balanced else "proportional", train.seed
    )
    for path in paths:
        accumulator.add(load_samples(path))
    return accumulator.result(), accumulator.n_seen


def _fit(config: MappingConfig, samples: SampleSet) -> Any:
    counts = samples.class_counts()
    if counts.min() == 0:
        raise S2AgriInputError(
            f"the training boxes hold {counts[0]} not-cultivated and {counts[1]} cultivated labelled pixels: "
            "add boxes with both classes"
        )
    train = pixel_training(config)
    try:
        return train_pixel_model(train.model, samples, use_weights=train.sample_weights, **train.params)
    except (TypeError, ValueError) as exc:
        raise S2AgriInputError(
            f"train.params do not fit model {config.train.model} ({exc}): check the parameter names"
        ) from exc


def select_threshold(
    samples_dir: Path, names: Sequence[str], config: MappingConfig
) -> tuple[float | None, dict[str, Any]]:
    """Fit on all but the validation boxes, choose the threshold on their samples (weighted MCC).

    ``(None, {})`` when no box can be held out (``train.threshold_boxes`` 0, or fewer than
    :data:`MIN_BOXES_FOR_THRESHOLD` boxes).
    """
    held_out = validation_boxes(names, pixel_training(config).threshold_boxes)
    if not held_out:
        return None, {}
    fit_on = [samples_dir / f"{name}.npz" for name in names if name not in held_out]
    model = _fit(config, _accumulate(fit_on, config)[0])
    ys, probas, weights = [], [], []
    for name in held_out:
        path = samples_dir / f"{name}.npz"
        y, weight, _ = box_sample_weights(path)
        ys.append(y)
        weights.append(weight)
        probas.append(model.predict_proba(load_samples(path).X))
    threshold, scores = choose_threshold(np.concatenate(ys), np.concatenate(probas), np.concatenate(weights))
    LOGGER.info(
        "threshold %.2f chosen on %s: weighted MCC %.3f (%.3f at 0.5)",
        threshold,
        ", ".join(held_out),
        scores["weighted_mcc"],
        scores["weighted_mcc_at_0.5"],
    )
    return threshold, {"validation_boxes": held_out, **scores}


def train_model(
    boxes: Sequence[Path], config: MappingConfig, folder: Path, workers: int = 1
) -> dict[str, Any]:
    """Sample ``boxes``, fit ``config.train.model`` and write the model folder into ``folder``.

    Boxes that fail (e.g. no valid frame) are skipped with a warning and listed in the card;
    it is an error when none is left or the samples miss a class. Returns the model card.
    """
    root, folders = relative_folders(boxes)
    names = [box.name for box in boxes]
    samples_dir = folder / f".{SAMPLES}"
    workflow = SamplingWorkflow(config, root, samples_dir)
    start = time.perf_counter()
    summary = execute(
        workflow.workflow, workflow.execution_kwargs(folders, boxes), names, folder / REPORT, workers
    )
    if not summary.succeeded:
        raise S2AgriInputError(f"no training box could be sampled: {summary.failure_line()}")
    if summary.failures:
        LOGGER.warning("skipping training boxes: %s", summary.failure_line())
    samples, n_seen = _accumulate([samples_dir / f"{name}.npz" for name in summary.succeeded], config)
    sampling_seconds = time.perf_counter() - start
    counts = samples.class_counts()
    start = time.perf_counter()
    threshold, threshold_selection = (
        select_threshold(samples_dir, summary.succeeded, config)
        if config.predict.threshold is None
        else (None, {})
    )
    model = _fit(config, samples)
    shutil.rmtree(samples_dir)
    train_seconds = time.perf_counter() - start
    card = {
        "params": config.train.params,
        "train_seconds": round(train_seconds, 2),
        "sampling_seconds": round(sampling_seconds, 2),
        "training_boxes": summary.succeeded,
        "skipped_boxes": summary.failures,
        "samples": {"total": len(samples), "not_cultivated": int(counts[0]), "cultivated": int(counts[1])},
        "samples_seen": n_seen,
        "threshold": config.predict.cutoff if threshold is None else threshold,
        "threshold_selection": threshold_selection,
        "feature_names": list(samples.feature_names or ()),
        "config": config.model_dump(mode="json"),
    }
    card = save_trained(model, config.train.model, folder, card)
    dump_config(config, folder / "config.json")
    LOGGER.info("trained %s in %.1f s on %d samples", config.train.model, train_seconds, len(samples))
    return card

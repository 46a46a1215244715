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

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2agri.models.sampling import SampleAccumulator, SampleSet
from s2agri.tasks.predict_pixel import train_pixel_model
from s2agri.workflows.config import DEEP_MODELS, PARCEL_MODELS, MappingConfig, dump_config, load_config
from s2agri.workflows.errors import S2AgriInputError
from s2agri.workflows.mapping import SAMPLES, SamplingWorkflow, required_inputs
from s2agri.workflows.model_store import save_trained
from s2agri.workflows.runs import (
    REPORT,
    check_out,
    execute,
    find_boxes,
    preflight,
    relative_folders,
    staged_folder,
)

LOGGER = logging.getLogger(__name__)


def load_samples(path: Path) -> SampleSet:
    """A :class:`SampleSet` from a ``.npz`` written by :class:`~s2agri.workflows.mapping.SamplePixelsTask`."""
    with np.load(path) as data:
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
    accumulator = SampleAccumulator(
        config.train.max_samples, "balanced" if config.train.balanced else "proportional", config.train.seed
    )
    for name in summary.succeeded:
        accumulator.add(load_samples(samples_dir / f"{name}.npz"))
    shutil.rmtree(samples_dir)
    samples = accumulator.result()
    sampling_seconds = time.perf_counter() - start
    counts = samples.class_counts()
    if counts.min() == 0:
        raise S2AgriInputError(
            f"the training boxes hold {counts[0]} not-cultivated and {counts[1]} cultivated labelled pixels: "
            "add boxes with both classes"
        )
    start = time.perf_counter()
    try:
        model = train_pixel_model(
            config.train.model, samples, use_weights=config.train.sample_weights, **config.train.params
        )
    except (TypeError, ValueError) as exc:
        raise S2AgriInputError(
            f"train.params do not fit model {config.train.model} ({exc}): check the parameter names"
        ) from exc
    train_seconds = time.perf_counter() - start
    card = {
        "params": config.train.params,
        "train_seconds": round(train_seconds, 2),
        "sampling_seconds": round(sampling_seconds, 2),
        "training_boxes": summary.succeeded,
        "skipped_boxes": summary.failures,
        "samples": {"total": len(samples), "not_cultivated": int(counts[0]), "cultivated": int(counts[1])},
        "samples_seen": accumulator.n_seen,
        "feature_names": list(samples.feature_names or ()),
        "config": config.model_dump(mode="json"),
    }
    card = save_trained(model, config.train.model, folder, card)
    dump_config(config, folder / "config.json")
    LOGGER.info("trained %s in %.1f s on %d samples", config.train.model, train_seconds, len(samples))
    return card


def train_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri train``."""
    config = load_config(args.config)
    updates: dict[str, Any] = {}
    if args.model is not None:
        updates["train"] = config.train.model_copy(update={"model": args.model})
    if getattr(args, "preset", None) is not None:
        train = updates.get("train", config.train)
        updates["train"] = train.model_copy(update={"preset": args.preset})
    if args.workers is not None:
        updates["workers"] = args.workers
    config = MappingConfig.model_validate({**config.model_dump(), **updates})
    out = check_out(args.out, args.overwrite)
    boxes = find_boxes(args.boxes)
    preflight(boxes, required_inputs(config, reference=True))
    with staged_folder(out) as staging:
        if config.train.model in DEEP_MODELS:
            from s2agri.workflows.train_deep import train_deep_model

            card = train_deep_model(boxes, config, staging)
            dump_config(config, staging / "config.json")
        elif config.train.model in PARCEL_MODELS:
            from s2agri.workflows.train_parcel import train_parcel_model

            card = train_parcel_model(boxes, config, staging)
            dump_config(config, staging / "config.json")
        else:
            card = train_model(boxes, config, staging, config.workers)
    if config.train.model in PARCEL_MODELS:
        validation = card["validation"]
        print(
            f"trained {card['model']} ({card['n_parameters']} parameters) on {card['parcels']['train']} parcels of "
            f"{len(card['training_boxes'])} boxes in {card['train_seconds']:.1f} s: {card['epochs']} epochs "
            f"({card['stop_reason']}), best epoch {card['best_epoch']}: val loss {validation['val_loss']:.4f}, "
            f"val MCC {validation['val_mcc']:.3f}"
        )
    elif config.train.model in DEEP_MODELS:
        validation = card["validation"]
        print(
            f"trained {card['model']} ({card['n_parameters']} parameters) on {card['patches']['train']} patches of "
            f"{len(card['training_boxes'])} boxes in {card['train_seconds']:.1f} s: {card['epochs']} epochs "
            f"({card['stop_reason']}), best epoch {card['best_epoch']}: val loss {validation['val_loss']:.4f}, "
            f"val MCC {validation['val_mcc']:.3f}"
        )
    else:
        print(
            f"trained {card['model']} on {card['samples']['total']} pixels of {len(card['training_boxes'])} boxes "
            f"in {card['train_seconds']:.1f} s: {card['n_parameters']} nodes, {card['serialized_bytes']} bytes"
        )
    if card.get("skipped_boxes"):
        print(f"skipped {len(card['skipped_boxes'])} boxes, see {out / 'model_card.json'}")
    print(f"wrote the model to {out}")
    return 0

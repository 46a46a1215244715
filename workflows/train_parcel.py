"""Training of the parcel classifiers (``tempcnn``, ``transformer``, ``lstm-parcel``) on known parcels.

Each box's parcels (``vector_timeless/REFERENCE`` with their labels) get their zonal statistics
(the prediction's own tasks: reflectance, validity, frame filter, :class:`ZonalStatisticsTask` with
``parcel.buffer_m``); the series are monthly medians of ``deep.months`` (fixed length, the only
choice for ``tempcnn``) or one step per frame, padded with NaN to the longest box. Targets: 1 for
cultivated parcels; not declared parcels and parcels without any valid step weigh 0. Validation
boxes are held out by box (``parcel.val_fraction``, at least one); the feature scaler is fitted on
the training parcels only; the one torch training loop (:class:`~s2agri.models.training.Trainer`,
:func:`~s2agri.models.parcel_training.parcel_trainer_config`) runs Adam with early stopping on the
validation loss, checkpointed every epoch and resumable with ``s2agri train --resume``. The model
folder gets ``model.pt`` (the best checkpoint in the trainer's format, plus the scaler, steps,
months, buffer and the resolved config: a plain dict for ``torch.load(weights_only=True)``),
``training/`` (``last.pt``, ``best.pt``, ``metrics.csv``) and ``model_card.json``, whose validation
scores come from predicting the validation boxes as ``s2agri predict`` does (zonal statistics ->
classifier -> painting at 2.5 m).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from eolearn.core import EOPatch, EOTask

from s2agri.models.datasets import split_boxes
from s2agri.models.names import PARCEL_MODELS, family_name
from s2agri.models.parcel_training import ParcelFeatureScaler, parcel_loaders, parcel_trainer_config
from s2agri.models.presets import preset_kwargs
from s2agri.models.registry import create_model, get_constructor
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.parcel_series import parcel_targets
from s2agri.tasks.predict_parcel import observed, parcel_series
from s2agri.tasks.zonal import ZonalStatisticsTask
from s2agri.workflows.config import MappingConfig
from s2agri.workflows.mapping import feature_tasks, parcel_tasks
from s2agri.workflows.model_store import save_card
from s2agri.workflows.runs import preflight
from s2agri.workflows.train_deep import (
    MODEL_FILE,
    publish_checkpoints,
    score_box_predictions,
    start_trainer,
    weights_bytes,
)

LOGGER = logging.getLogger(__name__)

#: Keys a parcel model checkpoint (``model.pt``, the trainer's ``best.pt``) holds besides the trainer's.
CHECKPOINT_KEYS: tuple[str, ...] = (
    "model_name",
    "model_kwargs",
    "model_state",
    "parcel_scaler",
    "steps",
    "months",
    "buffer_m",
    "mapping_config",
    "best_epoch",
)


@dataclass
class BoxParcels:
    """Model inputs of one box's parcels: series (N, T, F), positions (T,), targets and weights (N, 1)."""

    name: str
    x: np.ndarray
    doy: np.ndarray
    y: np.ndarray
    weight: np.ndarray


def check_parcel_config(config: MappingConfig) -> None:
    """One-line input errors for a parcel model the config cannot train."""
    name = config.train.model
    if family_name(name) != "parcel":
        raise S2AgriInputError(f"{name} is not a parcel model: use one of {', '.join(PARCEL_MODELS)}")
    if name == "tempcnn" and config.parcel.steps == "frames":
        raise S2AgriInputError(
            "tempcnn needs fixed-length monthly steps: set parcel.steps to 'monthly' (or train transformer / lstm-parcel)"
        )


def parcel_model_kwargs(config: MappingConfig, n_features: int) -> dict[str, Any]:
    """Constructor arguments: the preset, ``n_features``, tempcnn's ``n_steps``, then ``train.params``."""
    name = config.train.model
    parameters = inspect.signature(get_constructor(name)).parameters
    kwargs: dict[str, Any] = dict(preset_kwargs(name, config.train.preset))
    if "n_features" in parameters:
        kwargs["n_features"] = n_features
    if name == "tempcnn":
        kwargs["n_steps"] = len(config.deep.months)
    unknown = sorted(set(config.train.params) - set(parameters))
    if unknown:
        raise S2AgriInputError(
            f"train.params {', '.join(unknown)} are not arguments of {name}: use {', '.join(parameters)}"
        )
    for key in ("n_features", "n_steps"):
        if key in config.train.params and key in kwargs and config.train.params[key] != kwargs[key]:
            raise S2AgriInputError(
                f"train.params.{key}={config.train.params[key]} but the data give {kwargs[key]}: "
                "leave it out (n_steps follows deep.months)"
            )
    return {**kwargs, **config.train.params}


def _check_references(boxes: Sequence[Path], model: str) -> None:
    preflight(
        boxes,
        [contract.REFERENCE],
        f"{model} trains on known parcels, so every training box needs its parcel polygons with their labels",
    )


def box_features(box: Path, tasks: Sequence[EOTask]) -> EOPatch:
    """The box loaded and run through ``tasks`` (reflectance, validity, zonal statistics, ...)."""
    patch = EOPatch.load(str(box))
    for task in tasks:
        patch = task.execute(patch)
    return patch


def box_parcels(box: Path, tasks: Sequence[EOTask], config: MappingConfig) -> BoxParcels:
    """Series, positions, targets and weights of a box's parcels (weight 0: not declared or never observed)."""
    patch = box_features(box, tasks)
    x, doy, table = parcel_series(patch, config.parcel.steps, config.deep.months)
    y, weight = parcel_targets(table)
    weight = weight * observed(x)[:, None]
    return BoxParcels(box.name, x, doy, y, weight)


def stack_boxes(parcels: Sequence[BoxParcels], n_steps: int) -> tuple[np.ndarray, ...]:
    """``x`` (N, n_steps, F) padded with NaN, ``doy`` (N, n_steps) padded with 0, ``y``, ``weight``."""
    xs, doys = [], []
    for item in parcels:
        pad = n_steps - item.x.shape[1]
        xs.append(np.pad(item.x, ((0, 0), (0, pad), (0, 0)), constant_values=np.nan))
        doys.append(np.broadcast_to(np.pad(item.doy, (0, pad)), (len(item.x), n_steps)))
    return (
        np.concatenate(xs).astype(np.float32),
        np.concatenate(doys).astype(np.int64),
        np.concatenate([item.y for item in parcels]),
        np.concatenate([item.weight for item in parcels]),
    )


def validate_parcel_boxes(
    model: torch.nn.Module, scaler: ParcelFeatureScaler, boxes: Sequence[Path], config: MappingConfig
) -> dict[str, Any]:
    """Whole-box prediction of ``boxes`` as ``s2agri predict`` does it: seconds per box (zonal
    statistics, classification, painting) and the pooled challenge scores at 2.5 m."""
    tasks = parcel_tasks(
        model,
        scaler,
        model_name=config.train.model,
        steps=config.parcel.steps,
        months=config.deep.months,
        buffer_m=config.parcel.buffer_m,
        threshold=config.predict.cutoff,
        num_threads=config.deep.trainer.num_threads,
    )
    return score_box_predictions(
        boxes, lambda box: box_features(box, feature_tasks(config, statistics=False)), tasks
    )


def load_parcel_checkpoint(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode) and the checkpoint dict of a ``model.pt`` written by :func:`train_parcel_model`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"not a parcel model checkpoint: missing {', '.join(missing)}")
    model = create_model(checkpoint["model_name"], **checkpoint["model_kwargs"])
    model.load_state_dict(checkpoint["model_state"])
    model.eval()
    return model, checkpoint


def train_parcel_model(
    boxes: Sequence[Path],
    config: MappingConfig,
    folder: Path,
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``config.train.model`` on the parcels of ``boxes`` and write the model folder; returns the card.

    ``checkpoints``: where the trainer writes ``last.pt``/``best.pt``/``metrics.csv`` (default
    ``folder/training``), copied to ``folder/training`` at the end; ``resume`` continues the run
    whose ``last.pt`` is there (same boxes), as for the deep models."""
    name, parcel, seed = config.train.model, config.parcel, config.train.seed
    check_parcel_config(config)
    if len(boxes) < 2:
        raise S2AgriInputError(f"{name} needs at least 2 training boxes (one is held out for early stopping)")
    if parcel.val_fraction <= 0:
        raise S2AgriInputError(f"parcel.val_fraction is 0: {name} needs a validation box for early stopping")
    _check_references(boxes, name)
    train, val = split_boxes(list(boxes), parcel.val_fraction, seed=seed)
    start = time.perf_counter()
    tasks = [
        *feature_tasks(config, statistics=False),
        ZonalStatisticsTask(parcels=contract.REFERENCE, buffer=parcel.buffer_m),
    ]
    train_parcels = [box_parcels(box, tasks, config) for box in train]
    val_parcels = [box_parcels(box, tasks, config) for box in val]
    n_steps = max(item.x.shape[1] for item in train_parcels + val_parcels)
    x_train, doy_train, y_train, w_train = stack_boxes(train_parcels, n_steps)
    x_val, doy_val, y_val, w_val = stack_boxes(val_parcels, n_steps)
    for part, weight, listed in (("training", w_train, train), ("validation", w_val, val)):
        if weight.sum() == 0:
            raise S2AgriInputError(
                f"the {part} boxes ({', '.join(box.name for box in listed)}) hold no labelled parcel "
                "with a valid observation: add boxes with declared parcels"
            )
    scaler = ParcelFeatureScaler().fit(x_train)
    kwargs = parcel_model_kwargs(config, x_train.shape[-1])
    trainer_config = parcel_trainer_config(
        batch_size=parcel.batch_size,
        lr=parcel.lr,
        max_epochs=parcel.max_epochs,
        patience=parcel.patience,
        seed=seed,
        num_threads=config.deep.trainer.num_threads,
    )
    train_batches, val_batches = parcel_loaders(
        scaler.apply(x_train), y_train, w_train, scaler.apply(x_val), y_val, w_val,
        batch_size=parcel.batch_size, seed=seed, doy_train=doy_train, doy_val=doy_val,
    )  # fmt: skip
    box_names = {"training_boxes": [b.name for b in train], "validation_boxes": [b.name for b in val]}
    trainer = start_trainer(
        name, kwargs, trainer_config, folder, box_names, checkpoints=checkpoints, resume=resume
    )
    history = trainer.fit(
        train_batches,
        val_batches,
        checkpoint_extra={
            "parcel_scaler": scaler.to_dict(),
            "steps": parcel.steps,
            "months": [int(m) for m in config.deep.months],
            "buffer_m": float(parcel.buffer_m),
            "mapping_config": config.model_dump(mode="json"),
            **box_names,
        },
    )
    train_seconds = time.perf_counter() - start
    publish_checkpoints(trainer, folder)
    model, _ = load_parcel_checkpoint(folder / MODEL_FILE)
    checks = validate_parcel_boxes(model, scaler, val, config)
    best = history.best_row
    card = save_card(
        folder,
        {
            "model": name,
            "file": MODEL_FILE,
            "name": name,
            "n_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "serialized_bytes": weights_bytes(model),
            "model_kwargs": kwargs,
            "steps": parcel.steps,
            "n_steps": n_steps,
            "train_seconds": round(train_seconds, 2),
            "epochs": len(history.epochs),
            "best_epoch": history.best_epoch,
            "stop_reason": history.stop_reason,
            "validation": {"val_loss": best["val_loss"], "val_mcc": best["val_mcc"]},
            "learning_curve": [
                {k: row.get(k) for k in ("epoch", "train_loss", "val_loss", "val_mcc")}
                for row in history.epochs
            ],
            **checks,
            "training_boxes": [box.name for box in train],
            "validation_boxes": [box.name for box in val],
            "parcels": {"train": int((w_train > 0).sum()), "validation": int((w_val > 0).sum())},
            "config": config.model_dump(mode="json"),
        },
    )
    LOGGER.info(
        "trained %s: %d epochs (%s), best val loss %.4f at epoch %d, %.1f s",
        name,
        len(history.epochs),
        history.stop_reason,
        history.best_val_loss,
        history.best_epoch,
        train_seconds,
    )
    return card

"""Training of the deep segmenters (:data:`s2agri.workflows.config.DEEP_MODELS`) on tensor patches of many boxes.

Validation boxes are held out by box (``deep.val_fraction``, at least one); the percentile
normaliser is fitted on the training boxes only; patches stream from :class:`PatchDataset` (at most
``deep.cache_boxes`` boxes in memory) in single-box batches; :class:`Trainer` runs Adam with early
stopping on the validation loss and writes ``training/metrics.csv``, ``last.pt`` and ``best.pt``.
The best checkpoint becomes the model folder's ``model.pt`` (with the normaliser, the frame count
and the resolved config), and ``model_card.json`` gets the parameter count, the serialized size of
the weights, the training time, the validation metrics of the best epoch (on patches), and the
whole-box inference seconds and challenge scores of the validation boxes.
"""

from __future__ import annotations

import inspect
import io
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from eolearn.core import EOPatch, EOTask
from torch.utils.data import DataLoader

from s2agri.models.datasets import BoxBatchSampler, PatchDataset, box_observations, split_boxes
from s2agri.models.presets import preset_kwargs
from s2agri.models.registry import get_constructor
from s2agri.models.training import BEST_CHECKPOINT, Trainer, build_model_from_checkpoint
from s2agri.tasks import contract
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask
from s2agri.tasks.metrics import box_confusions, pool_confusions, scores
from s2agri.tasks.predict_deep import DeepModelPredictTask
from s2agri.tasks.prediction import PRED_CULTIVATED
from s2agri.tasks.tensors import PercentileNormaliser
from s2agri.workflows.config import MONTHLY_MODELS, MappingConfig
from s2agri.workflows.errors import S2AgriInputError
from s2agri.workflows.model_store import save_card

LOGGER = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
TRAINING = "training"


def _constructor_arguments(model: str) -> set[str]:
    return set(inspect.signature(get_constructor(model)).parameters)


def months_for(config: MappingConfig) -> tuple[int, ...] | None:
    """Calendar months of the monthly-median input (``deep.months``) of the monthly models, else None."""
    return tuple(config.deep.months) if config.train.model in MONTHLY_MODELS else None


def frames_for(config: MappingConfig) -> int | None:
    """Time steps per box the model sees: ``deep.n_frames`` (fixed, the least cloudy in time order),
    every frame (None) with ``deep.all_frames`` (models that take any number of frames only), or the
    number of months of ``deep.months`` for the monthly models."""
    months = months_for(config)
    if months is not None:
        return len(months)
    if config.deep.all_frames:
        if "n_frames" in _constructor_arguments(config.train.model):
            raise S2AgriInputError(
                f"deep.all_frames is for models that take any number of frames (gcnn, spinet, "
                f"spinet-nomrf, deeplab): {config.train.model} needs a fixed deep.n_frames"
            )
        return None
    return config.deep.n_frames


def model_kwargs(config: MappingConfig, n_frames: int | None) -> dict[str, Any]:
    """Constructor arguments: the ``train.preset`` configuration, ``train.params`` over it, and the
    number of frames (``n_frames``) or months (``n_months``) of the stacks where the model takes it."""
    name = config.train.model
    try:
        kwargs: dict[str, Any] = {**preset_kwargs(name, config.train.preset), **config.train.params}
    except ValueError as exc:
        raise S2AgriInputError(f"train.preset: {exc}") from exc
    accepted = _constructor_arguments(name)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise S2AgriInputError(
            f"train.params {', '.join(unknown)} are not arguments of {name}: use {', '.join(sorted(accepted))}"
        )
    for key in ("n_frames", "n_months"):
        if key not in accepted:
            continue
        given = kwargs.setdefault(key, n_frames)
        if given != n_frames:
            source = "deep.months" if key == "n_months" else "deep.n_frames"
            raise S2AgriInputError(
                f"train.params.{key}={given} but the stacks have {n_frames} steps: set {source} instead"
            )
    return kwargs


def weights_bytes(model: torch.nn.Module) -> int:
    """Size of the model's ``state_dict`` saved with ``torch.save`` (the deployable weights)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def validate_on_boxes(
    trained: torch.nn.Module,
    normaliser: PercentileNormaliser,
    n_frames: int | None,
    boxes: Sequence[Path],
    config: MappingConfig,
    valid_task: ValidMaskTask,
    months: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Whole-box prediction of the validation boxes (as ``s2agri predict`` does it): seconds per box
    and the pooled challenge scores at 2.5 m."""
    task = DeepModelPredictTask(
        trained,
        normaliser,
        n_frames,
        config.predict.cutoff,
        tile=config.deep.tile,
        num_threads=config.deep.trainer.num_threads,
        months=months,
    )
    return score_box_predictions(
        boxes, lambda box: valid_task.execute(ReflectanceTask().execute(EOPatch.load(str(box)))), [task]
    )


def score_box_predictions(
    boxes: Sequence[Path], load: Callable[[Path], EOPatch], tasks: Sequence[EOTask]
) -> dict[str, Any]:
    """Run ``tasks`` on each ``load(box)`` (timed, loading excluded) and score its PRED_CULTIVATED:
    ``inference_seconds_per_box`` and the pooled ``validation_box_scores`` at 2.5 m."""
    seconds, confusions = [], []
    for box in boxes:
        patch = load(box)
        start = time.perf_counter()
        for task in tasks:
            patch = task.execute(patch)
        seconds.append(time.perf_counter() - start)
        not_declared = patch[contract.NOT_DECLARED][..., 0] if contract.NOT_DECLARED in patch else None
        confusions.append(
            box_confusions(patch[contract.CULTIVATED][..., 0], patch[PRED_CULTIVATED][..., 0], not_declared)
        )
    return {
        "inference_seconds_per_box": round(sum(seconds) / len(seconds), 3) if seconds else None,
        "validation_box_scores": scores(pool_confusions(confusions)) if confusions else None,
    }


def _loader(dataset: PatchDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    sampler = BoxBatchSampler(dataset, batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=0)


def train_deep_model(boxes: Sequence[Path], config: MappingConfig, folder: Path) -> dict[str, Any]:
    """Train ``config.train.model`` on ``boxes`` and write the model folder; returns the model card."""
    if len(boxes) < 2:
        raise S2AgriInputError(
            f"{config.train.model} needs at least 2 training boxes (one is held out for early stopping)"
        )
    deep, seed = config.deep, config.train.seed
    n_frames = frames_for(config)
    months = months_for(config)
    kwargs = model_kwargs(config, n_frames)
    train, val = split_boxes(list(boxes), deep.val_fraction, seed=seed)
    valid_task = ValidMaskTask(
        clp_threshold=config.masks.clp_threshold, scl_invalid_classes=config.masks.scl_invalid_classes
    )
    start = time.perf_counter()
    normaliser = PercentileNormaliser(seed=seed).fit(
        box_observations(train, None if months else n_frames, valid_mask_task=valid_task)
    )
    common = {
        "normaliser": normaliser,
        "patch_size": deep.patch_size,
        "n_frames": n_frames,
        "weights": deep.weights,
        "seed": seed,
        "cache_boxes": deep.cache_boxes,
        "valid_mask_task": valid_task,
        "months": months,
    }
    train_set = PatchDataset(train, augment=True, **common)
    val_set = PatchDataset(val, augment=False, **common)
    batch = deep.trainer.batch_size
    trainer = Trainer.build(
        config.train.model, kwargs, deep.trainer.model_copy(update={"seed": seed}), out_dir=folder / TRAINING
    )
    history = trainer.fit(
        _loader(train_set, batch, True, seed),
        _loader(val_set, batch, False, seed),
        checkpoint_extra={
            "normalisation": normaliser.to_dict(),
            "n_frames": n_frames,
            "months": None if months is None else list(months),
            "mapping_config": config.model_dump(mode="json"),
        },
    )
    train_seconds = time.perf_counter() - start
    shutil.copyfile(folder / TRAINING / BEST_CHECKPOINT, folder / MODEL_FILE)
    best = next(row for row in history.epochs if row["epoch"] == history.best_epoch)
    model = trainer.model
    best_model = build_model_from_checkpoint(folder / MODEL_FILE)
    checks = validate_on_boxes(best_model, normaliser, n_frames, val, config, valid_task, months)
    card = save_card(
        folder,
        {
            "model": config.train.model,
            "file": MODEL_FILE,
            "name": config.train.model,
            "n_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "serialized_bytes": weights_bytes(model),
            "model_kwargs": kwargs,
            "n_frames": n_frames,
            "months": None if months is None else list(months),
            "preset": config.train.preset,
            "train_seconds": round(train_seconds, 2),
            "epochs": len(history.epochs),
            "best_epoch": history.best_epoch,
            "stop_reason": history.stop_reason,
            "validation": {k: best[k] for k in best if k.startswith("val_")},
            **checks,
            "training_boxes": [box.name for box in train],
            "validation_boxes": [box.name for box in val],
            "patches": {"train": len(train_set), "validation": len(val_set)},
            "config": config.model_dump(mode="json"),
        },
    )
    LOGGER.info(
        "trained %s: %d epochs (%s), best val loss %.4f at epoch %d, %.0f s",
        config.train.model,
        len(history.epochs),
        history.stop_reason,
        history.best_val_loss,
        history.best_epoch,
        train_seconds,
    )
    return card

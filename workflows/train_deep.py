"""Training of the deep segmenters (:data:`s2agri.workflows.config.DEEP_MODELS`) on tensor patches of many boxes.

Validation boxes are held out by box (``deep.val_fraction``, at least one); the percentile
normaliser is fitted on the training boxes only; patches stream from :class:`PatchDataset` (at most
``deep.cache_boxes`` boxes in memory) in single-box batches; :class:`Trainer` runs Adam with early
stopping on the validation loss and writes ``training/metrics.csv``, ``last.pt`` and ``best.pt``.
The best checkpoint becomes the model folder's ``model.pt`` (with the normaliser, the frame count
and the resolved config), and ``model_card.json`` gets the parameter count, the serialized size of
the weights, the training time, the validation metrics of the best epoch (on patches), and the
whole-box inference seconds and challenge scores of the validation boxes. With selection on the
weighted MCC, the decision threshold is the one of :data:`THRESHOLDS` that scores best on the whole
validation boxes predicted as ``s2agri predict`` does (test-time augmentation included).
"""

from __future__ import annotations

import inspect
import io
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from eolearn.core import EOPatch, EOTask
from torch.utils.data import DataLoader

from s2agri.models.box_inputs import box_observations
from s2agri.models.checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT, build_model_from_checkpoint
from s2agri.models.datasets import BoxBatchSampler, PatchDataset, split_boxes
from s2agri.models.history import History
from s2agri.models.presets import preset_kwargs
from s2agri.models.registry import get_constructor
from s2agri.models.trainer_config import THRESHOLDS, TrainerConfig
from s2agri.models.training import Trainer
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask
from s2agri.tasks.metrics import box_confusions, pool_confusions, scores
from s2agri.tasks.predict_deep import DeepModelPredictTask
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_PROBA
from s2agri.tasks.tensors import PercentileNormaliser
from s2agri.tasks.weights import weight_map
from s2agri.workflows.config import MONTHLY_MODELS, MappingConfig
from s2agri.workflows.model_store import save_card

LOGGER = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
TRAINING = "training"


def _constructor_arguments(model: str) -> set[str]:
    return set(inspect.signature(get_constructor(model)).parameters)


def delineation_targets_for(model: str) -> bool:
    """Whether ``model`` learns the field-delineation targets (boundary and distance besides extent)."""
    return "boundary" in getattr(get_constructor(model), "output_names", ())


def months_for(config: MappingConfig) -> tuple[int, ...] | None:
    """Calendar months of the monthly-median input (``deep.months``) of the monthly models and of
    ``deep.inputs: monthly``, else None."""
    monthly = config.train.model in MONTHLY_MODELS or config.deep.inputs == "monthly"
    return tuple(config.deep.months) if monthly else None


def frames_for(config: MappingConfig) -> int | None:
    """Time steps per box the model sees: ``deep.n_frames`` (fixed, the least cloudy in time order),
    every frame (None) with ``deep.all_frames`` (models that take any number of frames only), or the
    number of months of ``deep.months`` for monthly inputs."""
    months = months_for(config)
    if months is not None:
        if config.deep.all_frames:
            raise S2AgriInputError(
                f"deep.all_frames and monthly inputs ({config.train.model}, deep.inputs "
                f"{config.deep.inputs}) exclude each other: drop deep.all_frames, or set deep.inputs: frames"
            )
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
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Whole-box prediction of the validation boxes (as ``s2agri predict`` does it, with
    ``predict.tta``): seconds per box and the pooled challenge scores at 2.5 m, at
    ``predict.cutoff`` or, with ``thresholds``, at the best of them (:func:`score_box_predictions`)."""
    task = DeepModelPredictTask(
        trained,
        normaliser,
        n_frames,
        config.predict.cutoff,
        tile=config.deep.tile,
        num_threads=config.deep.trainer.num_threads,
        months=months,
        tta=config.predict.tta,
    )
    return score_box_predictions(
        boxes,
        lambda box: valid_task.execute(ReflectanceTask().execute(EOPatch.load(str(box)))),
        [task],
        thresholds,
    )


def score_box_predictions(
    boxes: Sequence[Path],
    load: Callable[[Path], EOPatch],
    tasks: Sequence[EOTask],
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Run ``tasks`` on each ``load(box)`` (timed, loading excluded) and score its PRED_CULTIVATED:
    ``inference_seconds_per_box`` and the pooled ``validation_box_scores`` at 2.5 m.

    With ``thresholds``, PRED_PROBA is scored at each of them instead: ``threshold`` is the one with
    the highest pooled weighted MCC (the lowest wins a tie), ``validation_box_scores`` are the scores
    at it and ``weighted_mcc_by_threshold`` lists the weighted MCC at each."""
    seconds: list[float] = []
    cuts: Sequence[float | None] = [None] if thresholds is None else thresholds
    confusions: list[list[dict[str, Any]]] = [[] for _ in cuts]
    for box in boxes:
        patch = load(box)
        start = time.perf_counter()
        for task in tasks:
            patch = task.execute(patch)
        seconds.append(time.perf_counter() - start)
        truth = patch[contract.CULTIVATED][..., 0]
        not_declared = patch[contract.NOT_DECLARED][..., 0] if contract.NOT_DECLARED in patch else None
        weights = weight_map(truth, not_declared)
        for cut, box_list in zip(cuts, confusions, strict=True):
            pred = patch[PRED_CULTIVATED][..., 0] if cut is None else patch[PRED_PROBA][..., 0] >= cut
            box_list.append(box_confusions(truth, pred, not_declared, weights))
    if not seconds:
        return {"inference_seconds_per_box": None, "validation_box_scores": None}
    pooled = [scores(pool_confusions(box_list)) for box_list in confusions]
    best = max(range(len(pooled)), key=lambda i: (pooled[i]["weighted_mcc"], -i))
    result: dict[str, Any] = {
        "inference_seconds_per_box": round(sum(seconds) / len(seconds), 3),
        "validation_box_scores": pooled[best],
    }
    if thresholds is not None:
        result["threshold"] = float(thresholds[best])
        result["weighted_mcc_by_threshold"] = {
            f"{cut:g}": round(score["weighted_mcc"], 4) for cut, score in zip(thresholds, pooled, strict=True)
        }
    return result


def class_balance_weight(boxes: Sequence[Path], limits: tuple[float, float] = (0.2, 5.0)) -> float:
    """Not-cultivated / cultivated pixel count of the boxes' references (NOT_DECLARED left out),
    clipped to ``limits``: the loss weight that gives both classes the same total weight."""
    positives = negatives = 0
    for box in boxes:
        patch = EOPatch.load(str(box), features=[contract.CULTIVATED, contract.NOT_DECLARED])
        declared = ~patch[contract.NOT_DECLARED][..., 0].astype(bool)
        cultivated = patch[contract.CULTIVATED][..., 0].astype(bool) & declared
        positives += int(cultivated.sum())
        negatives += int(declared.sum()) - int(cultivated.sum())
    if positives == 0 or negatives == 0:
        return 1.0
    weight = min(max(negatives / positives, limits[0]), limits[1])
    LOGGER.info(
        "class balance: %d cultivated, %d other pixels: pos_weight %.3f", positives, negatives, weight
    )
    return float(weight)


def chooses_threshold(history: History, trainer_config: TrainerConfig, config: MappingConfig) -> bool:
    """Whether the run chooses its decision threshold on its validation boxes: selection on the
    weighted MCC and no ``predict.threshold`` given."""
    return (
        config.predict.threshold is None
        and trainer_config.selection == "val_weighted_mcc"
        and history.best_threshold is not None
    )


def threshold_selection(
    history: History, checks: dict[str, Any], config: MappingConfig, val: Sequence[Path]
) -> dict[str, Any]:
    """How the threshold was chosen: on the whole validation boxes predicted as ``s2agri predict``
    does (with ``predict.tta``), by the best checkpoint (``epoch``), whose patches chose ``patches``."""
    best = next(row for row in history.epochs if row["epoch"] == history.best_epoch)
    by_threshold = checks["weighted_mcc_by_threshold"]
    return {
        "validation_boxes": [box.name for box in val],
        "epoch": history.best_epoch,
        "tta": config.predict.tta,
        "weighted_mcc": checks["validation_box_scores"]["weighted_mcc"],
        "weighted_mcc_at_0.5": by_threshold.get("0.5"),
        "weighted_mcc_by_threshold": by_threshold,
        "patches": {
            "threshold": history.best_threshold,
            "weighted_mcc": best.get("val_threshold_weighted_mcc"),
        },
    }


def _loader(dataset: PatchDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    sampler = BoxBatchSampler(dataset, batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=0)


def checkpoints_folder(out: Path) -> Path:
    """Where ``s2agri train`` keeps the checkpoints of a run into ``out`` until it is published
    (``.<out>.checkpoints`` next to it): an interrupted run leaves them there for ``--resume``."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.checkpoints"


#: Trainer settings a resumed run may change (others would break the run it continues).
RESUMABLE_CHANGES: frozenset[str] = frozenset({"max_epochs", "patience", "num_threads", "device"})
#: The same settings of the parcel classifiers' recipe (``parcel`` section).
RESUMABLE_PARCEL_CHANGES: frozenset[str] = frozenset({"max_epochs", "patience"})


def resume_config(checkpoint: Path, config: MappingConfig, explicit: bool) -> MappingConfig:
    """The config of the run stored in ``checkpoint``, with the ``deep.trainer`` and ``parcel`` changes
    of ``config`` a resume allows (:data:`RESUMABLE_CHANGES`, :data:`RESUMABLE_PARCEL_CHANGES`) when
    ``explicit`` (the user gave ``--config``); any other difference is an input error naming the setting."""
    from s2agri.models.checkpoints import load_checkpoint

    try:
        stored = MappingConfig.model_validate(
            load_checkpoint(checkpoint)["mapping_config"], context={"stored": True}
        )
    except (KeyError, ValueError) as exc:
        raise S2AgriInputError(f"{checkpoint} cannot be resumed ({exc}): train without --resume") from exc
    if not explicit:
        return stored
    given_trainer = config.deep.trainer.model_dump()
    stored_trainer = stored.deep.trainer.model_dump()
    trainer_changes = {k: v for k, v in given_trainer.items() if stored_trainer[k] != v}
    parcel_changes = {
        k: getattr(config.parcel, k)
        for k in RESUMABLE_PARCEL_CHANGES
        if getattr(config.parcel, k) != getattr(stored.parcel, k)
    }
    rest = config.model_dump(mode="json")
    previous = stored.model_dump(mode="json")
    rest["deep"].pop("trainer")
    previous["deep"].pop("trainer")
    for key in RESUMABLE_PARCEL_CHANGES:
        rest["parcel"].pop(key)
        previous["parcel"].pop(key)
    rest.pop("workers", None)
    previous.pop("workers", None)
    differing = sorted(
        [f"deep.trainer.{k}" for k in trainer_changes if k not in RESUMABLE_CHANGES]
        + [key for key in rest if rest[key] != previous.get(key)]
    )
    if differing:
        raise S2AgriInputError(
            f"--resume continues the run in {checkpoint.parent} but --config changes {', '.join(differing)}: "
            f"only deep.trainer {', '.join(sorted(RESUMABLE_CHANGES))} and parcel "
            f"{', '.join(sorted(RESUMABLE_PARCEL_CHANGES))} may change; train without --resume"
        )
    return stored.model_copy(
        update={
            "deep": stored.deep.model_copy(
                update={"trainer": stored.deep.trainer.model_copy(update=trainer_changes)}
            ),
            "parcel": stored.parcel.model_copy(update=parcel_changes),
        }
    )


def start_trainer(
    name: str,
    kwargs: dict[str, Any],
    trainer_config: TrainerConfig,
    folder: Path,
    box_names: dict[str, list[str]],
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> Trainer:
    """The :class:`Trainer` of a ``train`` run of any torch model: a new one writing to ``checkpoints``
    (default ``folder/training``), or with ``resume`` the run whose ``last.pt`` is there, which must
    have been trained on the same ``box_names`` (stored with its checkpoints)."""
    run_dir = folder / TRAINING if checkpoints is None else checkpoints
    if resume:
        trainer = Trainer.resume(run_dir / LAST_CHECKPOINT, run_dir, config=trainer_config)
        stored = {key: trainer.extra.get(key) for key in box_names}
        if stored != box_names:
            raise S2AgriInputError(
                f"--resume: the run in {run_dir} was trained on {stored['training_boxes']} (validation "
                f"{stored['validation_boxes']}), not on these boxes: give the same boxes or train without --resume"
            )
        return trainer
    try:
        return Trainer.build(name, kwargs, trainer_config, out_dir=run_dir, overwrite=checkpoints is not None)
    except (TypeError, ValueError) as exc:
        raise S2AgriInputError(f"train.params do not fit model {name} ({exc}): check the values") from exc


def publish_checkpoints(trainer: Trainer, folder: Path) -> None:
    """Copy a finished run's checkpoints into ``folder/training`` (when they were written elsewhere)
    and its best checkpoint to ``folder/model.pt``."""
    if trainer.out_dir != folder / TRAINING:
        shutil.copytree(trainer.out_dir, folder / TRAINING, dirs_exist_ok=True)
    shutil.copyfile(folder / TRAINING / BEST_CHECKPOINT, folder / MODEL_FILE)


def train_deep_model(
    boxes: Sequence[Path],
    config: MappingConfig,
    folder: Path,
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``config.train.model`` on ``boxes`` and write the model folder; returns the model card.

    ``checkpoints``: where the trainer writes ``last.pt``/``best.pt``/``metrics.csv`` (default
    ``folder/training``); they are copied to ``folder/training`` at the end. ``resume``: continue the
    run whose ``last.pt`` is in ``checkpoints`` (same boxes, see :func:`resume_config`)."""
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
    common: dict[str, Any] = {
        "normaliser": normaliser,
        "patch_size": deep.patch_size,
        "n_frames": n_frames,
        "weights": deep.weights,
        "seed": seed,
        "cache_boxes": deep.cache_boxes,
        "valid_mask_task": valid_task,
        "months": months,
        "delineation": delineation_targets_for(config.train.model),
    }
    per_box = None if deep.samples_per_epoch is None else math.ceil(deep.samples_per_epoch / len(train))
    train_set = PatchDataset(train, augment=True, patches_per_box=per_box, **common)
    val_set = PatchDataset(val, augment=False, **common)
    batch = deep.trainer.batch_size
    trainer_config = deep.trainer.model_copy(update={"seed": seed})
    if deep.class_balance and trainer_config.pos_weight is None:
        trainer_config = trainer_config.model_copy(update={"pos_weight": class_balance_weight(train)})
    box_names = {"training_boxes": [b.name for b in train], "validation_boxes": [b.name for b in val]}
    trainer = start_trainer(
        config.train.model, kwargs, trainer_config, folder, box_names, checkpoints=checkpoints, resume=resume
    )
    history = trainer.fit(
        _loader(train_set, batch, True, seed),
        _loader(val_set, batch, False, seed),
        checkpoint_extra={
            "normalisation": normaliser.to_dict(),
            "n_frames": n_frames,
            "months": None if months is None else list(months),
            "mapping_config": config.model_dump(mode="json"),
            **box_names,
        },
    )
    train_seconds = time.perf_counter() - start
    publish_checkpoints(trainer, folder)
    choose = chooses_threshold(history, trainer_config, config)
    best = next(row for row in history.epochs if row["epoch"] == history.best_epoch)
    model = trainer.model
    best_model = build_model_from_checkpoint(folder / MODEL_FILE)
    checks = validate_on_boxes(
        best_model, normaliser, n_frames, val, config, valid_task, months, THRESHOLDS if choose else None
    )
    threshold = checks.pop("threshold", None)
    selection = threshold_selection(history, checks, config, val) if choose else {}
    checks.pop("weighted_mcc_by_threshold", None)
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
            "threshold": config.predict.cutoff if threshold is None else threshold,
            "threshold_selection": selection,
            "pos_weight": trainer_config.pos_weight,
            "learning_curve": [
                {
                    k: row.get(k)
                    for k in ("epoch", "train_loss", "val_loss", "val_threshold_weighted_mcc", "lr")
                }
                for row in history.epochs
            ],
            **checks,
            "training_boxes": [box.name for box in train],
            "validation_boxes": [box.name for box in val],
            "patches": {"train_per_epoch": len(train_set), "validation": len(val_set)},
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

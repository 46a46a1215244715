"""Model families: how each kind of model is trained, loaded and put into the per-box workflow.

Every model belongs to one family (:data:`s2agri.models.names.FAMILIES`):

* ``pixel`` (LightGBM, RandomForest): fitted in one go on pixel features sampled from the boxes;
  the per-box workflow computes the same features before predicting;
* ``deep`` (the torch segmenters, the field-delineation model): trained in epochs on tensor
  patches by :class:`s2agri.models.training.Trainer`, checkpointed, resumable with ``--resume``;
* ``parcel`` (TempCNN, Transformer, LSTM): classify known parcels from their zonal statistics; they
  need the parcel polygons of every box, and their instances are those parcels; trained in epochs
  by the same :class:`~s2agri.models.training.Trainer`, resumable with ``--resume``;
* ``rule`` (the NDVI rule): no training, usable by name.

A :class:`ModelFamily` answers everything the commands ask of a kind of model, so no caller branches
on lists of model names: :func:`family_of` gives the family of a model name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2agri.models.names import family_name

if TYPE_CHECKING:
    from eolearn.core import EOTask
    from pydantic import BaseModel

    from s2agri.workflows.config import MappingConfig
    from s2agri.workflows.model_store import TrainedModel

#: ``train(boxes, config, folder, *, checkpoints, resume) -> model card``
Trainer = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class ModelFamily:
    """What s2agri needs to know about one kind of model (module docstring)."""

    name: str
    #: trains in epochs whose checkpoints ``s2agri train --resume`` continues
    resumable: bool
    #: the per-box workflow computes the pixel features (``features`` section) before predicting
    pixel_features: bool
    #: predicts known parcels (needs the REFERENCE polygons; its instances are those parcels)
    known_parcels: bool
    #: ``(boxes, config, folder, *, checkpoints=None, resume=False) -> card``; None: not trainable
    train: Trainer | None
    #: the card of a trained model as the line ``s2agri train`` prints
    summary: Callable[[dict[str, Any]], str]
    #: the prediction nodes of the per-box workflow (after the feature tasks)
    prediction_tasks: Callable[[TrainedModel, MappingConfig], list[EOTask]]
    #: ``(name, checkpoint path, card) -> TrainedModel`` for ``.pt`` checkpoints; None: the registry's loader
    load_checkpoint: Callable[[str, Path, dict[str, Any]], TrainedModel] | None = None
    #: the config the model owns: sections (``features``) or ``section.key`` settings (``deep.months``)
    #: it was trained on; ``predict`` uses the model's, and a ``--config`` that sets them otherwise is
    #: an input error naming both values
    model_inputs: tuple[str, ...] = ("masks",)

    @property
    def train_config(self) -> type[BaseModel] | None:
        """The family's ``train`` schema (one member of the config's union on ``train.model``, see
        :data:`s2agri.workflows.config.TRAIN_CONFIGS`); None for a family that is not trained."""
        from s2agri.workflows.config import TRAIN_CONFIGS

        return TRAIN_CONFIGS.get(self.name)


def _train_pixel(
    boxes: Sequence[Path],
    config: MappingConfig,
    folder: Path,
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    from s2agri.workflows.train import train_model

    return train_model(boxes, config, folder, config.workers)


def _train_in_epochs(module: str, function: str) -> Trainer:
    """The ``train`` of a family trained in epochs by the torch Trainer (``module.function``, imported
    when called): checkpoints and ``resume`` passed on, the resolved config saved with the model."""

    def train(
        boxes: Sequence[Path],
        config: MappingConfig,
        folder: Path,
        *,
        checkpoints: Path | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        from s2agri.workflows.config import dump_config

        train_fn = getattr(importlib.import_module(module), function)
        card: dict[str, Any] = train_fn(boxes, config, folder, checkpoints=checkpoints, resume=resume)
        dump_config(config, folder / "config.json")
        return card

    train.__name__ = function
    return train


_train_deep = _train_in_epochs("s2agri.workflows.train_deep", "train_deep_model")
_train_parcel = _train_in_epochs("s2agri.workflows.train_parcel", "train_parcel_model")


def _pixel_summary(card: dict[str, Any]) -> str:
    return (
        f"trained {card['model']} on {card['samples']['total']} pixels of {len(card['training_boxes'])} boxes "
        f"in {card['train_seconds']:.1f} s: {card['n_parameters']} nodes, {card['serialized_bytes']} bytes"
    )


def _deep_summary(card: dict[str, Any]) -> str:
    validation = card["validation"]
    return (
        f"trained {card['model']} ({card['n_parameters']} parameters) on {card['patches']['train_per_epoch']} "
        f"patches per epoch of {len(card['training_boxes'])} boxes in {card['train_seconds']:.1f} s: "
        f"{card['epochs']} epochs ({card['stop_reason']}), best epoch {card['best_epoch']}: val loss "
        f"{validation['val_loss']:.4f}; whole validation boxes: weighted MCC "
        f"{(card.get('validation_box_scores') or {}).get('weighted_mcc', 0.0):.3f} at threshold {card['threshold']:.2f}"
    )


def _parcel_summary(card: dict[str, Any]) -> str:
    validation = card["validation"]
    return (
        f"trained {card['model']} ({card['n_parameters']} parameters) on {card['parcels']['train']} parcels of "
        f"{len(card['training_boxes'])} boxes in {card['train_seconds']:.1f} s: {card['epochs']} epochs "
        f"({card['stop_reason']}), best epoch {card['best_epoch']}: val loss {validation['val_loss']:.4f}, "
        f"val MCC {validation['val_mcc']:.3f}"
    )


def _rule_summary(card: dict[str, Any]) -> str:
    return f"{card['model']} needs no training"


def _prediction(kind: str) -> Callable[[TrainedModel, MappingConfig], list[EOTask]]:
    def build(trained: TrainedModel, config: MappingConfig) -> list[EOTask]:
        from s2agri.workflows import mapping

        return getattr(mapping, f"{kind}_prediction_tasks")(trained, config)

    build.__name__ = f"{kind}_prediction_tasks"
    return build


def _load_deep(name: str, path: Path, card: dict[str, Any]) -> TrainedModel:
    from s2agri.workflows.model_store import load_deep_checkpoint

    return load_deep_checkpoint(name, path, card)


def _load_parcel(name: str, path: Path, card: dict[str, Any]) -> TrainedModel:
    from s2agri.workflows.model_store import load_parcel_checkpoint

    return load_parcel_checkpoint(name, path, card)


FAMILIES: dict[str, ModelFamily] = {
    "pixel": ModelFamily(
        "pixel",
        resumable=False,
        pixel_features=True,
        known_parcels=False,
        train=_train_pixel,
        summary=_pixel_summary,
        prediction_tasks=_prediction("pixel"),
        model_inputs=("masks", "features"),
    ),
    "deep": ModelFamily(
        "deep",
        resumable=True,
        pixel_features=False,
        known_parcels=False,
        train=_train_deep,
        summary=_deep_summary,
        prediction_tasks=_prediction("deep"),
        load_checkpoint=_load_deep,
        model_inputs=("masks", "deep.n_frames", "deep.all_frames", "deep.inputs", "deep.months"),
    ),
    "parcel": ModelFamily(
        "parcel",
        resumable=True,
        pixel_features=False,
        known_parcels=True,
        train=_train_parcel,
        summary=_parcel_summary,
        prediction_tasks=_prediction("parcel"),
        load_checkpoint=_load_parcel,
        model_inputs=("masks", "parcel.steps", "parcel.buffer_m", "deep.months"),
    ),
    "rule": ModelFamily(
        "rule",
        resumable=False,
        pixel_features=False,
        known_parcels=False,
        train=None,
        summary=_rule_summary,
        prediction_tasks=_prediction("rule"),
    ),
}


def family_of(model: str) -> ModelFamily:
    """The :class:`ModelFamily` of model name ``model``; ``ValueError`` for an unknown name."""
    return FAMILIES[family_name(model)]

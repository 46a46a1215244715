"""Trained-model folders: the fitted model file plus ``model_card.json``.

A folder written by ``s2agri train`` holds ``model.<ext>`` (the model's own format, e.g. a LightGBM
text dump) and ``model_card.json``: registry name, file, parameters, parameter count, serialized
size, training time, training boxes and sample counts, feature names, the resolved config and the
s2agri version. :func:`load_trained` also accepts the name of a model that needs no training
(``ndvi-rule``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from s2agri.models import rule
from s2agri.models.registry import available_models, load_model, model_summary
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.export import atomic_write_text
from s2agri.tasks.version import package_version

if TYPE_CHECKING:
    from s2agri.workflows.config import MappingConfig
    from s2agri.workflows.families import ModelFamily

LOGGER = logging.getLogger(__name__)

MODEL_CARD = "model_card.json"
#: Models that are rules, not fitted: usable by name with ``--model``.
UNTRAINED_MODELS: tuple[str, ...] = (rule.MODEL_NAME,)
_FILE_SUFFIX = {"lightgbm": ".txt", "random-forest": ".npz"}


@dataclass
class TrainedModel:
    """A model ready to predict: its registry name, the fitted object (None for a rule) and its card."""

    name: str
    model: Any | None
    card: dict[str, Any] = field(default_factory=dict)
    #: deep models only: the training percentiles and the frames per box
    normaliser: Any | None = None
    n_frames: int | None = None
    #: monthly models only: the calendar months of their monthly-median input
    months: tuple[int, ...] | None = None
    #: parcel classifiers only: ``scaler`` (ParcelFeatureScaler), ``steps``, ``months``, ``buffer_m``
    parcel: dict[str, Any] | None = None

    @property
    def family(self) -> ModelFamily:
        """How this kind of model is trained, loaded and predicted (:mod:`s2agri.workflows.families`)."""
        return family_of(self.name)

    @property
    def is_rule(self) -> bool:
        return self.family.name == "rule"

    @property
    def is_deep(self) -> bool:
        return self.family.name == "deep"

    @property
    def is_parcel(self) -> bool:
        return self.family.known_parcels


def family_of(name: str) -> ModelFamily:
    """The family of model ``name`` (imported here lazily: the families import this module)."""
    from s2agri.workflows.families import family_of as lookup

    return lookup(name)


def model_filename(name: str) -> str:
    """File name of a fitted model of registry ``name`` inside its folder."""
    return f"model{_FILE_SUFFIX.get(name, '.bin')}"


def save_card(folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``model_card.json`` (with creation time and s2agri version) into ``folder``, atomically."""
    card = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "s2agri_version": package_version(),
        **card,
    }
    atomic_write_text(folder / MODEL_CARD, json.dumps(card, indent=2, default=str) + "\n")
    return card


def save_trained(model: Any, name: str, folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write a fitted pixel classifier and its card (completed with size and parameter counts) into
    ``folder``; returns the completed card."""
    folder.mkdir(parents=True, exist_ok=True)
    filename = model_filename(name)
    model.save(folder / filename)
    return save_card(folder, {"model": name, "file": filename, **model_summary(model), **card})


def load_trained(spec: str | os.PathLike[str]) -> TrainedModel:
    """A model by folder (written by ``s2agri train``) or by the name of a rule (``ndvi-rule``)."""
    if str(spec) in UNTRAINED_MODELS:
        return TrainedModel(str(spec), None, {"model": str(spec), "n_parameters": 0})
    folder = Path(spec)
    card_path = folder / MODEL_CARD
    if not card_path.is_file():
        raise S2AgriInputError(
            f"--model {spec}: no {MODEL_CARD} there: give a folder written by 's2agri train' "
            f"or one of {', '.join(UNTRAINED_MODELS)}"
        )
    try:
        card = json.loads(card_path.read_text())
        name, filename = card["model"], card["file"]
    except (ValueError, KeyError) as exc:
        raise S2AgriInputError(
            f"{card_path} is not a valid model card ({exc}): train the model again"
        ) from exc
    if name not in available_models():
        raise S2AgriInputError(
            f"{card_path} names model {name!r}, which this s2agri does not know: "
            f"known are {', '.join(available_models())}"
        )
    path = folder / filename
    if not path.is_file():
        raise S2AgriInputError(f"{card_path} names {filename}, which is missing: train the model again")
    loader = family_of(name).load_checkpoint
    if path.suffix == ".pt" and loader is not None:
        return loader(name, path, card)
    try:
        model = load_model(name, path)
    except (OSError, ValueError) as exc:
        raise S2AgriInputError(
            f"{path} cannot be read as a {name} model ({exc}): train the model again"
        ) from exc
    LOGGER.info("loaded %s from %s", name, path)
    return TrainedModel(name, model, card)


def load_deep_checkpoint(name: str, path: Path, card: dict[str, Any]) -> TrainedModel:
    """A torch segmenter from its checkpoint (``torch.load(weights_only=True)``) with its normaliser."""
    from s2agri.models.checkpoints import build_model_from_checkpoint, load_checkpoint
    from s2agri.tasks.tensors import PercentileNormaliser

    try:
        checkpoint = load_checkpoint(path)
        model = build_model_from_checkpoint(checkpoint)
        normaliser = PercentileNormaliser.from_dict(checkpoint["normalisation"])
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise S2AgriInputError(
            f"{path} cannot be read as a {name} checkpoint ({exc}): train the model again"
        ) from exc
    LOGGER.info("loaded %s from %s (epoch %s)", name, path, checkpoint.get("best_epoch"))
    months = checkpoint.get("months")
    return TrainedModel(
        name, model, card, normaliser, checkpoint.get("n_frames"), None if months is None else tuple(months)
    )


def load_parcel_checkpoint(name: str, path: Path, card: dict[str, Any]) -> TrainedModel:
    """A parcel classifier from its checkpoint with its feature scaler, steps, months and buffer."""
    from s2agri.models.parcel_training import ParcelFeatureScaler
    from s2agri.workflows.train_parcel import load_parcel_checkpoint

    try:
        model, checkpoint = load_parcel_checkpoint(path)
        parcel = {
            "scaler": ParcelFeatureScaler.from_dict(checkpoint["parcel_scaler"]),
            "steps": str(checkpoint["steps"]),
            "months": tuple(int(m) for m in checkpoint["months"]),
            "buffer_m": float(checkpoint["buffer_m"]),
        }
    except Exception as exc:  # pickle and state-dict errors come in many types
        raise S2AgriInputError(
            f"{path} cannot be read as a {name} checkpoint ({' '.join(str(exc).split())}): train the model again"
        ) from exc
    LOGGER.info(
        "loaded %s from %s (epoch %s, %s steps)", name, path, checkpoint["best_epoch"], parcel["steps"]
    )
    return TrainedModel(name, model, card, parcel=parcel)


def with_model_inputs(
    trained: TrainedModel, config: MappingConfig, explicit: Mapping[str, Any] | None = None
) -> MappingConfig:
    """``config`` with the inputs the model was trained with (its family's ``model_inputs``: whole
    sections such as ``features``, or single settings such as ``deep.months``) and, when
    ``predict.threshold`` is unset, the threshold the model chose.

    ``explicit`` is what the user's config file said: an input it sets otherwise than the model is an
    input error naming both values (a model computes wrong maps from other inputs).
    """
    from s2agri.workflows.config import MappingConfig, validation_problems

    trained_config = trained.card.get("config") or {}
    sections: dict[str, Any] = {}
    for entry in trained.family.model_inputs:
        section, _, key = entry.partition(".")
        if section not in trained_config:
            continue
        try:
            own_section = getattr(MappingConfig.model_validate({section: trained_config[section]}), section)
        except ValidationError as exc:
            raise S2AgriInputError(
                f"the card of {trained.name} holds an invalid {section} section ({validation_problems(exc)}): "
                "train the model again"
            ) from exc
        given_section = sections.get(section, getattr(config, section))
        own = getattr(own_section, key) if key else own_section
        given = getattr(given_section, key) if key else given_section
        stated_section = None if explicit is None else explicit.get(section)
        stated = explicit is not None and section in explicit
        if key:
            stated = isinstance(stated_section, Mapping) and key in stated_section
        if stated and given != own:
            shown = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in (given, own)]
            raise S2AgriInputError(
                f"--config {entry} is {shown[0]} but model {trained.name} was trained with {entry} {shown[1]}: "
                f"drop {entry} from the config (the model's is used) or train a model with yours"
            )
        sections[section] = given_section.model_copy(update={key: own}) if key else own
    updates: dict[str, Any] = dict(sections)
    threshold = trained.card.get("threshold")
    if config.predict.threshold is None and threshold is not None:
        updates["predict"] = config.predict.model_copy(update={"threshold": float(threshold)})
    return config.model_copy(update=updates) if updates else config

"""Names of the models, by family, and of their prediction modes (no heavy imports: the CLI parser and
the config use them)."""

from __future__ import annotations

from typing import Literal

#: Pixel classifiers fitted on sampled pixels (5x5 statistics) by :mod:`s2agri.workflows.train`.
PIXEL_MODELS: tuple[str, ...] = ("lightgbm", "random-forest")
#: Torch segmenters trained on tensor patches by :mod:`s2agri.workflows.train_deep`:
#: (B, T, C, H, W) at 10 m -> (B, 1, 4H, 4W) logits at 2.5 m.
DEEP_MODELS: tuple[str, ...] = (
    "gcnn",
    "unet-b",
    "unet-tc",
    "spinet",
    "spinet-nomrf",
    "fg-unet",
    "deeplab",
    "mlp",
    "lstm",
    "convlstm",
    "convstar",
    "unet-delineation",
)
#: Segmenters with extent, boundary and distance outputs (field delineation, :mod:`s2agri.models.field_delineation`).
DELINEATION_MODELS: tuple[str, ...] = ("unet-delineation",)
#: Segmenters whose input is the series of monthly medians (``deep.months``), not the frames.
MONTHLY_MODELS: tuple[str, ...] = ("convlstm", "convstar")
#: Parcel classifiers trained on zonal statistics of known parcels (:mod:`s2agri.workflows.train_parcel`).
PARCEL_MODELS: tuple[str, ...] = ("tempcnn", "transformer", "lstm-parcel")
#: Every model ``s2agri train --model`` accepts.
TRAINABLE_MODELS: tuple[str, ...] = PIXEL_MODELS + DEEP_MODELS + PARCEL_MODELS
#: Models that need no training, usable by name with ``--model``.
RULE_MODELS: tuple[str, ...] = ("ndvi-rule",)
#: Test-time augmentation of the deep segmenters: the orientations of the box whose predictions are
#: averaged (:data:`s2agri.models.inference.TTA_TRANSFORMS`).
TTAMode = Literal["none", "flips", "dihedral"]
#: Family -> its models; every model belongs to exactly one family (how each family is trained,
#: loaded and predicted: :mod:`s2agri.workflows.families`).
FAMILIES: dict[str, tuple[str, ...]] = {
    "pixel": PIXEL_MODELS,
    "deep": DEEP_MODELS,
    "parcel": PARCEL_MODELS,
    "rule": RULE_MODELS,
}


def family_name(model: str) -> str:
    """The family of model ``model`` (a key of :data:`FAMILIES`); ``ValueError`` for an unknown name."""
    for family, models in FAMILIES.items():
        if model in models:
            return family
    known = ", ".join(m for models in FAMILIES.values() for m in models)
    raise ValueError(f"unknown model {model!r}: known models are {known}")

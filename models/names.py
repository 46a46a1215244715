"""Names of the trainable models, by family (no imports: the CLI parser and the config use them)."""

from __future__ import annotations

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

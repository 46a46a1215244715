"""Hyper-parameters of the torch training loop, without importing torch (configs are read by every
command, most of which never train)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Decision thresholds scored on the validation pixels every epoch (``selection="val_weighted_mcc"``).
THRESHOLDS: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))


class TrainerConfig(BaseModel):
    """Hyper-parameters of :class:`Trainer` (defaults: seed 000's recipe)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, ge=0.0, description="Adam learning rate")
    batch_size: int = Field(100, ge=1, description="patches per batch (the caller builds the loaders)")
    max_epochs: int = Field(100, ge=1)
    patience: int = Field(12, ge=1, description="stop after this many epochs without a better val loss")
    weighted_loss: bool = Field(True, description="BCE weighted by the item weight; False: weight only masks")
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads during fit (None: unchanged)")
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient L2 norm (None: no clipping)")
    deterministic: bool = Field(True, description="torch.use_deterministic_algorithms during fit")
    schedule: Literal["constant", "cosine", "onecycle"] = Field(
        "constant",
        description="learning rate per step: constant lr; cosine decay to 0 after a linear warm-up; "
        "one-cycle (linear up to lr over the warm-up, cosine down to lr/1e4)",
    )
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up length (epochs) of cosine/onecycle")
    selection: Literal["val_loss", "val_weighted_mcc"] = Field(
        "val_loss",
        description="what picks best.pt and drives early stopping: the validation loss, or the validation "
        "weighted MCC at its best decision threshold (the threshold is then stored)",
    )
    pos_weight: float | None = Field(
        None, gt=0.0, description="loss weight of cultivated pixels relative to the others (None: 1)"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay (AdamW; 0: Adam)")

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        import torch  # here, not at import: configs are read by commands that never train

        try:
            torch.device(value)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"invalid torch device {value!r}: {error}") from None
        return value

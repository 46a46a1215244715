"""Fitting the parcel classifiers (:mod:`s2agri.models.parcel`) on (N, T, F) per-parcel series.

Knows nothing about files or EOPatches: the caller builds the series (NaN marks missing steps,
padded to a common T), the 0/1 targets and the weights (0 = ignore, e.g. not declared parcels).

* :class:`ParcelFeatureScaler`: per-feature standardisation fitted NaN-ignoring on the training
  parcels; NaN stays NaN, so the models still see which steps are missing.
* :class:`ParcelBatches` / :func:`parcel_loaders`: the series as batches for the one torch training
  loop, :class:`~s2agri.models.training.Trainer` (seeded shuffles per epoch, exact resume, the
  shared checkpoint format of :mod:`s2agri.models.checkpoints`); the parcel models take the
  batch's ``doy`` through their ``batch_inputs``.
* :func:`parcel_trainer_config`: the parcel recipe (Adam, constant lr, weighted BCE
  ``sum(w * bce) / sum(w)``, early stopping and best checkpoint on the validation loss);
  :func:`fit_parcel_classifier` runs it on arrays in memory and loads the best weights.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoints import load_checkpoint
from .history import History
from .trainer_config import TrainerConfig
from .training import Trainer, epoch_seed

LOGGER = logging.getLogger(__name__)

#: Smallest standard deviation of a feature (constant features are only centred).
STD_FLOOR = 1e-6


@dataclass
class ParcelFeatureScaler:
    """Per-feature ``(x - mean) / std`` of (N, T, F) series; NaN (missing steps) kept as NaN."""

    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None and self.std is not None

    @property
    def n_features(self) -> int:
        return len(self.mean or ())

    def fit(self, x: np.ndarray) -> ParcelFeatureScaler:
        """Fit mean and std (floored at :data:`STD_FLOOR`) of each feature over every finite value."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3:
            raise ValueError(f"x has shape {x.shape}: expected (N, T, F) series")
        flat = x.reshape(-1, x.shape[-1])
        empty = ~np.isfinite(flat).any(axis=0)
        if empty.any():
            raise ValueError(f"features {np.flatnonzero(empty).tolist()} have no finite value: cannot fit")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(flat, axis=0)
            std = np.nanstd(flat, axis=0)
        self.mean = mean.tolist()
        self.std = np.maximum(std, STD_FLOOR).tolist()
        return self

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 standardised copy of (…, F) ``x``; NaN stays NaN."""
        if not self.fitted:
            raise ValueError("the scaler is not fitted: fit it or load it from the model's checkpoint")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.n_features:
            raise ValueError(f"x has {x.shape[-1]} features, the scaler {self.n_features}")
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((x - mean) / std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists (storable in a ``torch.save`` checkpoint read with ``weights_only=True``)."""
        if not self.fitted:
            raise ValueError("the scaler is not fitted")
        return {"mean": [float(v) for v in self.mean or ()], "std": [float(v) for v in self.std or ()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> ParcelFeatureScaler:
        mean, std = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"scaler has {len(mean)} means and {len(std)} stds")
        return cls(mean, std)


def _column(values: np.ndarray, n: int, name: str) -> Tensor:
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size != n:
        raise ValueError(f"{name} has {values.size} values for {n} parcels")
    return torch.from_numpy(values.copy())[:, None]


def _positions(doy: np.ndarray | None, n: int, n_steps: int) -> Tensor | None:
    """(N, T) int64 positions from (T,) or (N, T) ``doy``; None stays None."""
    if doy is None:
        return None
    positions = torch.as_tensor(np.asarray(doy), dtype=torch.int64)
    if positions.ndim == 1:
        positions = positions.expand(n, -1)
    if tuple(positions.shape) != (n, n_steps):
        raise ValueError(f"doy has shape {tuple(positions.shape)}: expected ({n_steps},) or ({n}, {n_steps})")
    return positions.contiguous()


class ParcelBatches:
    """Batches of parcel series for :class:`~s2agri.models.training.Trainer`: dicts of ``x`` (B, T, F),
    ``y`` and ``weight`` (B, 1) and, when given, ``doy`` (B, T).

    ``shuffle``: a new order every epoch, drawn from ``(seed, epoch)`` (:meth:`set_epoch`, called by
    the trainer), so a resumed run sees the same batches. A trailing batch of one parcel joins the
    previous batch (batch norm cannot train on a single item).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray,
        doy: np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x = torch.from_numpy(np.asarray(x, dtype=np.float32).copy())
        if self.x.ndim != 3:
            raise ValueError(f"series of shape {tuple(self.x.shape)}: expected (N, T, F)")
        n = len(self.x)
        self.y, self.weight = _column(y, n, "y"), _column(weight, n, "weight")
        self.doy = _positions(doy, n, self.x.shape[1])
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _index_batches(self) -> list[Tensor]:
        n = len(self.x)
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        batches = list(order.split(self.batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1:
            single = batches.pop()
            batches[-1] = torch.cat([batches[-1], single])
        return batches

    def __len__(self) -> int:
        return len(self._index_batches())

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for index in self._index_batches():
            batch = {"x": self.x[index], "y": self.y[index], "weight": self.weight[index]}
            if self.doy is not None:
                batch["doy"] = self.doy[index]
            yield batch


def parcel_loaders(
    x_train: np.ndarray,
    y_train: np.ndarray,
    w_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    w_val: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    doy_train: np.ndarray | None = None,
    doy_val: np.ndarray | None = None,
) -> tuple[ParcelBatches, ParcelBatches]:
    """Training (shuffled) and validation batches of scaled (N, T, F) series, their inputs checked."""
    train = ParcelBatches(
        x_train, y_train, w_train, doy_train, batch_size=batch_size, shuffle=True, seed=seed
    )
    val = ParcelBatches(x_val, y_val, w_val, doy_val, batch_size=batch_size, shuffle=False, seed=seed)
    if train.x.shape[1:] != val.x.shape[1:]:
        raise ValueError(
            f"series of shapes {tuple(train.x.shape)} and {tuple(val.x.shape)}: expected (N, T, F) alike"
        )
    if float(train.weight.sum()) <= 0 or float(val.weight.sum()) <= 0:
        raise ValueError(
            "the training and the validation parcels both need some weight > 0 (labelled parcels)"
        )
    if len(train.x) < 2:
        raise ValueError(f"{len(train.x)} training parcel(s): need at least 2")
    return train, val


def parcel_trainer_config(
    *, batch_size: int, lr: float, max_epochs: int, patience: int, seed: int, num_threads: int | None = None
) -> TrainerConfig:
    """The parcel recipe as a :class:`TrainerConfig`: Adam at a constant ``lr``, weighted BCE, best
    checkpoint and early stopping on the validation loss."""
    if min(batch_size, max_epochs, patience) < 1 or lr <= 0:
        raise ValueError("batch_size, max_epochs and patience must be >= 1 and lr > 0")
    return TrainerConfig(
        lr=lr,
        batch_size=batch_size,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
        num_threads=num_threads,
        selection="val_loss",
        schedule="constant",
    )


def fit_parcel_classifier(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    w_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    w_val: np.ndarray,
    *,
    out_dir: str | os.PathLike[str],
    batch_size: int,
    lr: float,
    max_epochs: int,
    patience: int,
    seed: int,
    doy_train: np.ndarray | None = None,
    doy_val: np.ndarray | None = None,
    num_threads: int | None = None,
    progress: bool = False,
) -> History:
    """Fit ``model`` (a registered parcel classifier, one logit) on scaled (N, T, F) series with the
    torch :class:`~s2agri.models.training.Trainer` (checkpoints and ``metrics.csv`` in ``out_dir``);
    returns the history with the best weights loaded into ``model`` (eval mode).

    ``y`` 0/1 and ``w`` (0 = ignore) have one value per parcel; ``doy`` (T,) or (N, T) positions
    reach the model's ``forward(x, doy=...)``.
    """
    config = parcel_trainer_config(
        batch_size=batch_size,
        lr=lr,
        max_epochs=max_epochs,
        patience=patience,
        seed=seed,
        num_threads=num_threads,
    )
    train, val = parcel_loaders(
        x_train, y_train, w_train, x_val, y_val, w_val,
        batch_size=batch_size, seed=seed, doy_train=doy_train, doy_val=doy_val,
    )  # fmt: skip
    trainer = Trainer(model, config, out_dir, progress=progress, overwrite=True)
    history = trainer.fit(train, val)
    model.load_state_dict(load_checkpoint(trainer.best_path)["model_state"])
    model.eval()
    return history

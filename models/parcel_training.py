"""Fitting the parcel classifiers (:mod:`s2agri.models.parcel`) on (N, T, F) per-parcel series.

Knows nothing about files or EOPatches: the caller builds the series (NaN marks missing steps,
padded to a common T), the 0/1 targets and the weights (0 = ignore, e.g. not declared parcels).

* :class:`ParcelFeatureScaler`: per-feature standardisation fitted NaN-ignoring on the training
  parcels; NaN stays NaN, so the models still see which steps are missing.
* :func:`fit_parcel_classifier`: Adam, weighted BCE with logits (``sum(w * bce) / sum(w)`` per batch
  and pooled over the epoch), early stopping on the validation loss, the best weights restored.
  Deterministic given the seed: ``torch.manual_seed(seed)`` before the first epoch (dropout) and a
  seeded ``torch.Generator`` for the shuffles; build the model after seeding for end-to-end runs.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from s2agri.tasks.metrics import Confusion, mcc

from .training import _torch_settings, masked_bce_with_logits

LOGGER = logging.getLogger(__name__)

#: Columns of the per-epoch history rows (and of ``training/metrics.csv``).
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "val_mcc", "epoch_seconds")
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


@dataclass
class ParcelFitResult:
    """Per-epoch rows (:data:`HISTORY_COLUMNS`), the best epoch (1-based) and why training stopped."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stop_reason: str = ""
    train_seconds: float = 0.0

    @property
    def best(self) -> dict[str, Any]:
        """The history row of the best epoch."""
        return next(row for row in self.history if row["epoch"] == self.best_epoch)


def history_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The history rows as CSV text (header :data:`HISTORY_COLUMNS`, floats round-trip exactly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in HISTORY_COLUMNS])
    return buffer.getvalue()


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
    return positions


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[Tensor]:
    """Index batches (shuffled with ``generator``); a trailing batch of 1 joins the previous one
    (batch norm cannot train on a single item)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def _evaluate(
    model: nn.Module, x: Tensor, y: Tensor, w: Tensor, doy: Tensor | None, batch_size: int
) -> tuple[float, float]:
    """Validation loss (weighted mean BCE) and weighted MCC at probability 0.5, in eval mode."""
    model.eval()
    loss_sum, weight_sum, logits = 0.0, 0.0, []
    with torch.no_grad():
        for index in _batches(len(x), batch_size, None):
            out = model(x[index], doy=None if doy is None else doy[index])
            total, weight = masked_bce_with_logits(out, y[index], w[index])
            loss_sum, weight_sum = loss_sum + float(total), weight_sum + float(weight)
            logits.append(out)
    pred = (torch.cat(logits) >= 0).numpy()[:, 0]
    truth, weights = y.numpy()[:, 0] > 0.5, w.numpy()[:, 0].astype(np.float64)
    confusion = Confusion(
        tp=float(weights[truth & pred].sum()),
        fp=float(weights[~truth & pred].sum()),
        fn=float(weights[truth & ~pred].sum()),
        tn=float(weights[~truth & ~pred].sum()),
    )
    return loss_sum / weight_sum, mcc(confusion)


def fit_parcel_classifier(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    w_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    w_val: np.ndarray,
    *,
    batch_size: int,
    lr: float,
    max_epochs: int,
    patience: int,
    seed: int,
    doy_train: np.ndarray | None = None,
    doy_val: np.ndarray | None = None,
    num_threads: int | None = None,
    progress: bool = False,
) -> ParcelFitResult:
    """Fit ``model`` (one logit) on scaled (N, T, F) series; returns the history, best weights loaded.

    ``y`` 0/1 and ``w`` (0 = ignore) have one value per parcel; ``doy`` (T,) or (N, T) positions
    reach the model's ``forward(x, doy=...)``. Stops after ``patience`` epochs without a lower
    validation loss (``stop_reason="patience"``) or at ``max_epochs``.
    """
    if min(batch_size, max_epochs, patience) < 1 or lr <= 0:
        raise ValueError("batch_size, max_epochs and patience must be >= 1 and lr > 0")
    x_tr, x_va = (torch.from_numpy(np.asarray(x, dtype=np.float32).copy()) for x in (x_train, x_val))
    if x_tr.ndim != 3 or x_va.ndim != 3 or x_tr.shape[1:] != x_va.shape[1:]:
        raise ValueError(
            f"series of shapes {tuple(x_tr.shape)} and {tuple(x_va.shape)}: expected (N, T, F) alike"
        )
    n_train, n_val = len(x_tr), len(x_va)
    y_tr, w_tr = _column(y_train, n_train, "y_train"), _column(w_train, n_train, "w_train")
    y_va, w_va = _column(y_val, n_val, "y_val"), _column(w_val, n_val, "w_val")
    if float(w_tr.sum()) <= 0 or float(w_va.sum()) <= 0:
        raise ValueError(
            "the training and the validation parcels both need some weight > 0 (labelled parcels)"
        )
    if n_train < 2:
        raise ValueError(f"{n_train} training parcel(s): need at least 2")
    doy_tr = _positions(doy_train, n_train, x_tr.shape[1])
    doy_va = _positions(doy_val, n_val, x_va.shape[1])

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    result = ParcelFitResult()
    best_state: dict[str, Tensor] = copy.deepcopy(model.state_dict())
    stale = 0
    start = time.perf_counter()
    epochs = range(1, max_epochs + 1)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="epochs", leave=False)
    with _torch_settings(num_threads, deterministic=True):
        for epoch in epochs:
            epoch_start = time.perf_counter()
            model.train()
            loss_sum, weight_sum = 0.0, 0.0
            for index in _batches(n_train, batch_size, generator):
                weight = w_tr[index]
                if float(weight.sum()) <= 0:
                    continue
                logits = model(x_tr[index], doy=None if doy_tr is None else doy_tr[index])
                total, batch_weight = masked_bce_with_logits(logits, y_tr[index], weight)
                optimiser.zero_grad(set_to_none=True)
                (total / batch_weight).backward()
                optimiser.step()
                loss_sum, weight_sum = loss_sum + total.item(), weight_sum + batch_weight.item()
            val_loss, val_mcc = _evaluate(model, x_va, y_va, w_va, doy_va, batch_size)
            result.history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss_sum / weight_sum,
                    "val_loss": val_loss,
                    "val_mcc": val_mcc,
                    "epoch_seconds": round(time.perf_counter() - epoch_start, 4),
                }
            )
            LOGGER.debug(
                "epoch %d: train %.4f, val %.4f, MCC %.3f", epoch, loss_sum / weight_sum, val_loss, val_mcc
            )
            if val_loss < result.best_val_loss:
                result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= patience:
                    result.stop_reason = "patience"
                    break
    result.stop_reason = result.stop_reason or "max_epochs"
    result.train_seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()
    return result

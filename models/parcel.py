"""Parcel classifiers of seed 004 (Sen4AgriNet OAD): TempCNN, Transformer encoder, LSTM.

Input: (B, T, F) per-parcel series, F = 2C (the C band means, then the C band stds of the parcel
at each step, :func:`s2agri.tasks.parcel_series.parcel_model_inputs`); output: (B, n_outputs) logits,
(B, 1) for the cultivated / not cultivated decision. The models know nothing about EOPatches.

Missing steps: a step is missing when any of its F values is NaN (a parcel fully clouded at a
date) or where ``key_padding_mask`` (B, T) is True (padding; True = ignore, as in torch). Every model
takes ``forward(x, key_padding_mask=None, doy=None)`` and handles missing steps itself, so NaN series
can be fed as they are (also through the generic trainer, which calls ``model(x)``):

* ``transformer`` masks them out of attention and out of the mean pooling (a series with no
  present step keeps its zero-filled steps, so the output stays finite); trailing padding with a
  mask leaves the output unchanged (tested);
* ``lstm-parcel`` runs over the steps up to the last present one (packed sequences; trailing
  padding changes nothing) and fills missing steps before it with :func:`fill_missing`;
* ``tempcnn`` (fixed length ``n_steps``) fills them with :func:`fill_missing`.

:func:`fill_missing`: forward fill in time, then backward fill, then 0 (whole feature vectors);
the numpy twin is :func:`s2agri.tasks.parcel_series.fill_missing`.

Configurations (:data:`PAPER_CONFIGS`, from the seed's text and its code, Orion-AI-Lab/S4A-Models,
``oad_experiments.py``): the seed classifies 11 crops from 13 bands (F = 26, 2 heads); here F = 24
(12 L2A bands) and one logit. Parameter counts, measured:

* ``tempcnn``: 3 x (conv 128, kernel 7, BN, ReLU, dropout 0.2), dense 4 x 128, 7 steps (the
  seed's code): 719,755 with F = 26 and 11 outputs (paper: ~719 k); 712,833 with F = 24, 1 output;
  647,297 with the 6 monthly steps of the challenge season (the :data:`TEMPCNN_PAPER_CONFIG` default).
* ``lstm-parcel``: 3 bidirectional layers, hidden 1024, dropout 0.2, last hidden -> 512 -> ReLU ->
  logits: 60,037,131 with F = 26, 11 outputs (paper: ~60 M); 60,015,617 with F = 24, 1 output.
* ``transformer``: d_model = F (no embedding), 2 heads, 3 layers, feed-forward 1024, dropout 0.1,
  mean pooling: 171,927 with F = 26, 11 outputs (paper: ~270 k); 158,113 with F = 24, 1 output.

The seed's code reproduces the TempCNN and LSTM counts exactly; its Transformer code has 171,927
parameters, not the ~270 k of the text (which also mentions "two linear layers" where the code
has one): we follow the code. CPU defaults (F = 24, 1 output): tempcnn 39,457 (hidden 32, k 5,
6 steps), lstm-parcel 60,545 (2 layers, hidden 64, fc 64), transformer 17,609 (2 layers,
feed-forward 128; 17,633 with ``pooling="cls"``).

Positional encoding of the transformer: the vanilla sine / cosine of Vaswani et al., added to the
input scaled by sqrt(d_model) as in the seed's code, at the time index 0 .. T-1 by default (the
seed), or at the day of year when ``doy`` (T,) or (B, T) is given: Sentinel-2 dates are irregular
and differ between boxes, so the day of year keeps a step's season. ``pooling="cls"`` uses a learnt
class token instead of the mean.

LSTM: the seed's code classifies ``output[:, -1]`` (for the backward direction, its state after
one step); here the final hidden states ``h_n`` of both directions of the last layer are used,
same parameter count.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from .registry import register_model

#: Constructor arguments of the seed's configurations (F = 24 here; the seed had 26).
#: TempCNN's length is the data's: 6 monthly medians here (March .. August), 7 in the seed's code.
TEMPCNN_PAPER_CONFIG: dict[str, Any] = {"hidden": 128, "kernel_size": 7, "dropout": 0.2}
LSTM_PAPER_CONFIG: dict[str, Any] = {
    "hidden": 1024,
    "n_layers": 3,
    "bidirectional": True,
    "dropout": 0.2,
    "fc": 512,
}
TRANSFORMER_PAPER_CONFIG: dict[str, Any] = {
    "d_model": None,
    "n_heads": 2,
    "n_layers": 3,
    "dim_feedforward": 1024,
    "dropout": 0.1,
    "pooling": "mean",
}
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "tempcnn": TEMPCNN_PAPER_CONFIG,
    "lstm-parcel": LSTM_PAPER_CONFIG,
    "transformer": TRANSFORMER_PAPER_CONFIG,
}
#: F of the project: mean and std of the 12 L2A bands.
N_FEATURES = 24


def missing_steps(x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """(B, T) bool: steps with a NaN in any feature, or True in ``key_padding_mask``."""
    missing = torch.isnan(x).any(dim=-1)
    if key_padding_mask is not None:
        if key_padding_mask.shape != missing.shape:
            raise ValueError(
                f"key_padding_mask has shape {tuple(key_padding_mask.shape)}: expected {tuple(missing.shape)}"
            )
        missing = missing | key_padding_mask.to(torch.bool)
    return missing


def fill_missing(x: Tensor, missing: Tensor | None = None) -> Tensor:
    """(B, T, F) with missing steps filled: forward fill in time, then backward fill, then 0.

    Missing steps: NaN in any feature or ``missing`` (B, T) True. Whole feature vectors are copied;
    a series without a present step becomes zeros. Vectorised with cummax / cummin.
    """
    if x.ndim != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (B, T, F)")
    absent = missing_steps(x, missing)
    n_steps = x.shape[1]
    steps = torch.arange(n_steps, device=x.device).expand_as(absent)
    previous = torch.where(~absent, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    following = (
        torch.where(~absent, steps, torch.full_like(steps, n_steps)).flip(1).cummin(dim=1).values.flip(1)
    )
    source = torch.where(previous >= 0, previous, following)
    has_source = source < n_steps
    index = source.clamp(max=max(n_steps - 1, 0)).unsqueeze(-1).expand_as(x)
    gathered = torch.gather(torch.nan_to_num(x, nan=0.0), 1, index)
    return torch.where(has_source.unsqueeze(-1), gathered, torch.zeros_like(gathered))


class ParcelClassifier(nn.Module):
    """Base of the parcel classifiers: config, parameter count, input checks."""

    name: ClassVar[str] = "parcel"
    #: The kind of input the model takes: (B, T, F) per-parcel series.
    input_kind: ClassVar[str] = "parcel-series"
    #: Batch entries the training loop passes to ``forward`` besides ``x``: the steps' day of year.
    batch_inputs: ClassVar[tuple[str, ...]] = ("doy",)

    config: dict[str, Any]
    n_features: int

    def _check(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.n_features:
            raise ValueError(f"{self.name} takes (B, T, {self.n_features}) series, got {tuple(x.shape)}")

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters() if p.requires_grad)


@register_model("tempcnn")
class TempCNN(ParcelClassifier):
    """TempCNN (Pelletier et al. 2019, as in BreizhCrops and the seed): 3 x (1-D conv over time, batch
    norm, ReLU, dropout), flatten, dense 4 * hidden + batch norm + ReLU + dropout, linear logits.

    Fixed length: ``n_steps`` steps (e.g. 6 monthly medians, March .. August); missing steps filled.
    """

    name: ClassVar[str] = "tempcnn"

    def __init__(
        self,
        n_features: int = N_FEATURES,
        n_steps: int = 6,
        hidden: int = 32,
        kernel_size: int = 5,
        dropout: float = 0.2,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if min(n_features, n_steps, hidden, kernel_size, n_outputs) < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError("tempcnn needs positive sizes and dropout in [0, 1)")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size}: use an odd size so the length is kept")
        self.n_features, self.n_steps = int(n_features), int(n_steps)
        self.config = {
            "n_features": self.n_features,
            "n_steps": self.n_steps,
            "hidden": int(hidden),
            "kernel_size": int(kernel_size),
            "dropout": float(dropout),
            "n_outputs": int(n_outputs),
        }
        layers: list[nn.Module] = []
        width = self.n_features
        for _ in range(3):
            layers += [
                nn.Conv1d(width, hidden, kernel_size, padding=kernel_size // 2),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
            ]
            width = hidden
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden * self.n_steps, 4 * hidden),
            nn.BatchNorm1d(4 * hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.out = nn.Linear(4 * hidden, n_outputs)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, doy: Tensor | None = None) -> Tensor:
        """(B, n_steps, F) -> (B, n_outputs) logits; ``doy`` is ignored (the steps are fixed)."""
        self._check(x)
        if x.shape[1] != self.n_steps:
            raise ValueError(f"tempcnn takes {self.n_steps} steps, got {x.shape[1]}: use monthly composites")
        x = fill_missing(x, key_padding_mask)
        return self.out(self.dense(self.convs(x.transpose(1, 2))))


@register_model("lstm-parcel")
class ParcelLSTM(ParcelClassifier):
    """LSTM over time (optionally bidirectional), final hidden state -> linear -> ReLU -> linear logits."""

    name: ClassVar[str] = "lstm-parcel"

    def __init__(
        self,
        n_features: int = N_FEATURES,
        hidden: int = 64,
        n_layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        fc: int = 64,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if min(n_features, hidden, n_layers, fc, n_outputs) < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError("lstm-parcel needs positive sizes and dropout in [0, 1)")
        self.n_features = int(n_features)
        self.config = {
            "n_features": self.n_features,
            "hidden": int(hidden),
            "n_layers": int(n_layers),
            "bidirectional": bool(bidirectional),
            "dropout": float(dropout),
            "fc": int(fc),
            "n_outputs": int(n_outputs),
        }
        self.directions = 2 if bidirectional else 1
        self.lstm = nn.LSTM(
            self.n_features,
            hidden,
            num_layers=n_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if n_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            nn.Linear(hidden * self.directions, fc), nn.ReLU(), nn.Linear(fc, n_outputs)
        )

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, doy: Tensor | None = None) -> Tensor:
        """(B, T, F) -> (B, n_outputs) logits; runs up to each series' last present step; ``doy`` ignored."""
        self._check(x)
        missing = missing_steps(x, key_padding_mask)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device)
        lengths = torch.where(missing, torch.zeros_like(steps), steps).amax(dim=1).clamp(min=1)
        filled = fill_missing(x, missing)
        packed = nn.utils.rnn.pack_padded_sequence(
            filled, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = self.lstm(packed)
        last = torch.cat(list(h_n[-self.directions :]), dim=-1)  # last layer, every direction
        return self.head(last)


class SinusoidalPositions(nn.Module):
    """Vaswani et al.'s sine / cosine encoding at arbitrary (integer or real) positions."""

    def __init__(self, d_model: int, max_period: float = 10000.0) -> None:
        super().__init__()
        frequencies = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(max_period) / d_model)
        )
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.d_model = d_model

    def forward(self, positions: Tensor) -> Tensor:
        """(B, T) positions -> (B, T, d_model): sin at even, cos at odd channels."""
        frequencies = cast(Tensor, self.frequencies)
        angles = positions.to(torch.float32).unsqueeze(-1) * frequencies
        encoding = torch.zeros(*positions.shape, self.d_model, device=positions.device)
        encoding[..., 0::2] = torch.sin(angles)
        encoding[..., 1::2] = torch.cos(angles[..., : self.d_model // 2])
        return encoding


@register_model("transformer")
class ParcelTransformer(ParcelClassifier):
    """Transformer encoder over time: (optional linear embedding), x sqrt(d_model) + sinusoidal
    positions (time index, or day of year), encoder layers (post-norm), masked mean pooling (or a
    class token), ReLU, linear logits. ``d_model=None`` uses the F features directly (the seed)."""

    name: ClassVar[str] = "transformer"

    def __init__(
        self,
        n_features: int = N_FEATURES,
        d_model: int | None = None,
        n_heads: int = 2,
        n_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        pooling: Literal["mean", "cls"] = "mean",
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        width = int(d_model) if d_model is not None else int(n_features)
        if (
            min(n_features, width, n_heads, n_layers, dim_feedforward, n_outputs) < 1
            or not 0.0 <= dropout < 1.0
        ):
            raise ValueError("transformer needs positive sizes and dropout in [0, 1)")
        if width % n_heads or width % 2:
            raise ValueError(f"d_model={width} must be even and divisible by n_heads={n_heads}")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={pooling!r}: use 'mean' or 'cls'")
        self.n_features, self.d_model, self.pooling = int(n_features), width, pooling
        self.config = {
            "n_features": self.n_features,
            "d_model": None if d_model is None else width,
            "n_heads": int(n_heads),
            "n_layers": int(n_layers),
            "dim_feedforward": int(dim_feedforward),
            "dropout": float(dropout),
            "pooling": pooling,
            "n_outputs": int(n_outputs),
        }
        self.embed = nn.Linear(self.n_features, width) if d_model is not None else nn.Identity()
        self.positions = SinusoidalPositions(width)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, n_heads, dim_feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if pooling == "cls" else None
        self.out = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, doy: Tensor | None = None) -> Tensor:
        """(B, T, F) -> (B, n_outputs) logits; ``doy`` (T,) or (B, T): positions, else 0 .. T-1."""
        self._check(x)
        batch, n_steps, _ = x.shape
        missing = missing_steps(x, key_padding_mask)
        missing = missing & ~missing.all(dim=1, keepdim=True)  # nothing present: attend to the zeros
        if doy is None:
            positions = torch.arange(n_steps, device=x.device).expand(batch, n_steps)
        else:
            positions = torch.as_tensor(doy, device=x.device).expand(batch, n_steps)
        h = self.embed(torch.nan_to_num(x, nan=0.0)) * math.sqrt(self.d_model)
        h = self.dropout(h + self.positions(positions))
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(batch, 1, -1), h], dim=1)
            missing = torch.cat([torch.zeros_like(missing[:, :1]), missing], dim=1)
        h = self.encoder(h, src_key_padding_mask=missing)
        if self.cls_token is not None:
            pooled = h[:, 0]
        else:
            keep = (~missing).unsqueeze(-1).to(h.dtype)
            pooled = (h * keep).sum(dim=1) / keep.sum(dim=1)
        return self.out(torch.relu(pooled))


def predict_proba(
    model: nn.Module,
    x: np.ndarray | Tensor,
    *,
    doy: np.ndarray | Tensor | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """(N,) float32 sigmoid probabilities of a one-logit parcel classifier, in eval mode, by batches."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, Tensor) else x.float()
    positions = None if doy is None else torch.as_tensor(np.asarray(doy), dtype=torch.int64)
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].to(device)
            doy_batch = None
            if positions is not None:
                doy_batch = positions if positions.ndim == 1 else positions[start : start + batch_size]
                doy_batch = doy_batch.to(device)
            out.append(torch.sigmoid(model(batch, doy=doy_batch)[:, 0]).cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, dtype=np.float32)

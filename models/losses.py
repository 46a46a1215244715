"""How a torch model meets a batch: its forward call and its loss.

Loss. The models output logits (B, 1, 4h, 4w) at 2.5 m; each batch carries a per-pixel
``weight`` (0 = ignore, e.g. NOT_DECLARED; else 1 or the challenge weight map). The loss is
``sum(w * bce_with_logits) / sum(w)``: a weighted *mean* over the pixels of the batch, so its
scale does not depend on the patch size or on how many pixels are ignored. With
``weighted_loss=False`` the weights only mask: ``w = (weight > 0)``. The epoch losses (train and
validation) pool the same way over every pixel of the epoch (sum of weighted losses divided by
the sum of weights), not as a mean of batch means. A batch whose weights are all 0 is skipped.
A model with several outputs gives its own loss through a ``training_loss(outputs, batch, *,
weighted, pos_weight) -> (sum, weights)`` hook (:func:`batch_loss`; e.g. the extent, boundary and
distance terms of :mod:`s2agri.models.field_delineation`, whose targets come as extra batch tensors);
its channel 0 is the cultivated logit the metrics use.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch convention)


def masked_bce_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    *,
    weighted: bool = True,
    pos_weight: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum(w * bce), sum(w))`` over all pixels; the loss is their ratio.

    ``w`` is ``weight`` (``weighted=True``) or ``weight > 0`` as 0/1, times ``pos_weight`` on the
    positive pixels when given (class balance). Returning the two sums lets callers pool a loss over
    many batches exactly.
    """
    if logits.shape != target.shape or target.shape != weight.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and weight "
            f"{tuple(weight.shape)} must have the same shape"
        )
    w = weight.to(logits.dtype) if weighted else (weight > 0).to(logits.dtype)
    if pos_weight is not None:
        w = w * torch.where(target > 0.5, float(pos_weight), 1.0).to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return (losses * w).sum(), w.sum()


def forward_batch(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``model(batch["x"], **inputs)``: the batch entries the model names in ``batch_inputs`` (e.g.
    the parcel classifiers' ``doy``) are passed as keyword arguments when the batch has them."""
    names = getattr(model, "batch_inputs", ())
    return model(batch["x"], **{name: batch[name] for name in names if name in batch})


def batch_loss(
    model: nn.Module,
    outputs: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    *,
    weighted: bool = True,
    pos_weight: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of weighted losses, sum of weights)`` of a batch: the model's own ``training_loss``
    hook when it has one (multi-output models, e.g. field delineation), else
    :func:`masked_bce_with_logits` of its single logit."""
    hook = getattr(model, "training_loss", None)
    if callable(hook):
        return hook(outputs, batch, weighted=weighted, pos_weight=pos_weight)
    return masked_bce_with_logits(
        outputs, batch["y"], batch["weight"], weighted=weighted, pos_weight=pos_weight
    )

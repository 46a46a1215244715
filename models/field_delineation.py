"""Field delineation segmenter: extent, boundary and distance heads at 2.5 m from the 10 m series.

The multi-task recipe of field-delineation models (sentinel-hub/field-delineation, Fields of The
World's 3-class masks): one network predicts, per 2.5 m pixel,

* ``extent``: the pixel lies inside a cultivated field (the binary map of the other segmenters);
* ``boundary``: the pixel lies on a field's outline or in the gap between two adjacent fields;
* ``distance``: the distance to the field's outline, normalised to 1 at the field's core.

:class:`DelineationUNet` (``unet-delineation``) is U-Net-TC (:mod:`s2agri.models.unet`, the best
segmenter of the benchmark) with three output logits instead of one. The training targets come from
:func:`s2agri.tasks.delineation.delineation_targets`; a batch carries them as ``y`` (extent) and
``aux`` (B, 2, 4h, 4w): boundary (0/1) and distance (in [0, 1]).

Loss (:meth:`DelineationUNet.training_loss`): the extent term is the binary models' loss (weighted
BCE with the class-balance ``pos_weight``); boundary is a BCE with ``boundary_pos_weight`` on the
(sparse) boundary pixels, distance a BCE against the soft targets, both over the pixels with weight
> 0; the three weighted means are summed with ``boundary_weight`` and ``distance_weight`` (0.5 each:
on the validation boxes of the benchmark, weights of 1 cost the extent 0.03 weighted MCC in the same
budget). The trainer's metrics and threshold selection use the extent channel (channel 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812 (torch convention)

from .registry import register_model
from .unet import UNetTC

#: Output channels of a delineation model, in order.
DELINEATION_OUTPUTS: tuple[str, ...] = ("extent", "boundary", "distance")


def _masked_mean_bce(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    total = weight.sum()
    if float(total) <= 0:
        return logits.sum() * 0.0
    losses = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return (losses * weight).sum() / total


@register_model("unet-delineation")
class DelineationUNet(UNetTC):
    """U-Net-TC with extent, boundary and distance logits (module docstring).

    Args (besides :class:`~s2agri.models.unet.UNet`'s):
        boundary_weight: weight of the boundary term of the loss.
        distance_weight: weight of the distance term of the loss.
        boundary_pos_weight: loss weight of boundary pixels relative to the others.
    """

    name: ClassVar[str] = "unet-delineation"
    n_outputs: ClassVar[int] = len(DELINEATION_OUTPUTS)
    output_names: ClassVar[tuple[str, ...]] = DELINEATION_OUTPUTS

    def __init__(
        self,
        n_frames: int = 20,
        n_bands: int = 12,
        base_width: int = 16,
        scale: int = 4,
        pooled_features: int = 0,
        boundary_weight: float = 0.5,
        distance_weight: float = 0.5,
        boundary_pos_weight: float = 2.0,
    ) -> None:
        super().__init__(n_frames, n_bands, base_width, scale, pooled_features)
        if min(boundary_weight, distance_weight) < 0 or boundary_pos_weight <= 0:
            raise ValueError(
                f"need boundary_weight, distance_weight >= 0 and boundary_pos_weight > 0, got "
                f"{boundary_weight}, {distance_weight}, {boundary_pos_weight}"
            )
        self.boundary_weight = float(boundary_weight)
        self.distance_weight = float(distance_weight)
        self.boundary_pos_weight = float(boundary_pos_weight)
        self.config.update(
            boundary_weight=self.boundary_weight,
            distance_weight=self.distance_weight,
            boundary_pos_weight=self.boundary_pos_weight,
        )

    def training_loss(
        self,
        outputs: Tensor,
        batch: Mapping[str, Tensor],
        *,
        weighted: bool = True,
        pos_weight: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(loss * sum(w), sum(w))`` of a batch (module docstring), ``w`` the extent term's weights:
        the trainer pools batches by the same weights as the binary models' loss."""
        y, weight, aux = batch["y"], batch["weight"], batch.get("aux")
        if aux is None or aux.shape[1] != 2:
            raise ValueError(
                f"{self.name} needs the boundary and distance targets ('aux', (B, 2, H, W)) in each batch"
            )
        if outputs.shape[1] != self.n_outputs or outputs.shape[2:] != y.shape[2:]:
            raise ValueError(f"outputs {tuple(outputs.shape)} do not match targets {tuple(y.shape)}")
        w = weight.to(outputs.dtype) if weighted else (weight > 0).to(outputs.dtype)
        if pos_weight is not None:
            w = w * torch.where(y > 0.5, float(pos_weight), 1.0).to(outputs.dtype)
        known = (weight > 0).to(outputs.dtype)
        boundary, distance = aux[:, :1], aux[:, 1:2]
        boundary_w = known * torch.where(boundary > 0.5, self.boundary_pos_weight, 1.0).to(outputs.dtype)
        extent_loss = _masked_mean_bce(outputs[:, :1], y, w)
        loss = (
            extent_loss
            + self.boundary_weight * _masked_mean_bce(outputs[:, 1:2], boundary, boundary_w)
            + self.distance_weight * _masked_mean_bce(outputs[:, 2:3], distance, known)
        )
        total = w.sum()
        return loss * total, total

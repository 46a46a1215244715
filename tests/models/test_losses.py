"""The batch contract of the torch models: forward call with named extra inputs, masked loss, loss hook."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch convention)

from s2agri.models.losses import batch_loss, forward_batch, masked_bce_with_logits


def test_masked_bce_normalises_by_the_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, generator=gen)
    target = (torch.rand(2, 1, 4, 4, generator=gen) > 0.5).float()
    weight = torch.rand(2, 1, 4, 4, generator=gen) * 2
    weight[0, 0, :2] = 0
    loss_sum, weight_sum = masked_bce_with_logits(logits, target, weight)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(loss_sum / weight_sum, (bce * weight).sum() / weight.sum())
    # ignored pixels do not matter; unweighted = plain mean over the kept pixels
    changed = logits.clone()
    changed[0, 0, :2] = 100.0
    assert torch.allclose(masked_bce_with_logits(changed, target, weight)[0], loss_sum)
    plain_sum, count = masked_bce_with_logits(logits, target, weight, weighted=False)
    assert count.item() == 24 and torch.allclose(plain_sum / count, bce[weight > 0].mean())
    with pytest.raises(ValueError, match="same shape"):
        masked_bce_with_logits(logits, target[:, :, :2], weight)


def test_pos_weight_weights_the_positive_pixels() -> None:
    logits = torch.tensor([[0.0, 1.0, -2.0]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    weight = torch.tensor([[1.0, 2.0, 0.5]])
    total, norm = masked_bce_with_logits(logits, target, weight, pos_weight=3.0)
    bce = [math.log(2), math.log(1 + math.e), math.log(1 + math.exp(2))]
    assert float(norm) == pytest.approx(3.0 + 2.0 + 1.5)
    assert float(total) == pytest.approx(3.0 * bce[0] + 2.0 * bce[1] + 1.5 * bce[2], rel=1e-6)


class _WithDoy(nn.Module):
    batch_inputs = ("doy",)

    def forward(self, x: torch.Tensor, doy: torch.Tensor | None = None) -> torch.Tensor:
        return x.sum(dim=-1) + (0 if doy is None else doy.float().sum())


class _OwnLoss(nn.Module):
    def training_loss(self, outputs, batch, *, weighted, pos_weight):
        return outputs.sum() * 0 + 7.0, torch.tensor(2.0)


def test_forward_batch_passes_the_inputs_the_model_names() -> None:
    x = torch.ones(2, 3)
    batch = {"x": x, "doy": torch.tensor([1, 2]), "y": torch.zeros(2), "other": torch.ones(1)}
    assert torch.equal(forward_batch(_WithDoy(), batch), torch.full((2,), 6.0))
    assert torch.equal(forward_batch(_WithDoy(), {"x": x}), torch.full((2,), 3.0))  # absent: default


def test_batch_loss_uses_the_models_hook_else_the_masked_bce() -> None:
    logits = torch.tensor([[0.0, 2.0]])
    batch = {"y": torch.tensor([[1.0, 0.0]]), "weight": torch.tensor([[1.0, 1.0]])}
    total, norm = batch_loss(nn.Identity(), logits, batch)
    expected = F.binary_cross_entropy_with_logits(logits, batch["y"], reduction="sum")
    assert float(norm) == 2.0 and float(total) == pytest.approx(float(expected))
    total, norm = batch_loss(_OwnLoss(), logits, batch)
    assert float(total) == 7.0 and float(norm) == 2.0

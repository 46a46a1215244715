"""The field-delineation model: three heads, its loss, tiled inference and the instances it splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eolearn.core import EOPatch
from sentinelhub import CRS, BBox

from s2agri.models.field_delineation import DELINEATION_OUTPUTS, DelineationUNet
from s2agri.models.inference import predict_tiled, predict_tiled_outputs
from s2agri.models.losses import batch_loss, masked_bce_with_logits
from s2agri.models.names import DEEP_MODELS, DELINEATION_MODELS
from s2agri.models.registry import create_model
from s2agri.models.training import evaluate
from s2agri.tasks.delineation import delineation_targets
from s2agri.tasks.instances import (
    PRED_INSTANCES,
    InstanceSegmentationTask,
    delineation_instances,
    watershed_instances,
)
from s2agri.tasks.prediction import PRED_BOUNDARY, PRED_CULTIVATED, PRED_DISTANCE


def _model(**kwargs: float) -> DelineationUNet:
    torch.manual_seed(0)
    return create_model("unet-delineation", n_frames=2, n_bands=3, base_width=4, **kwargs)


def _batch(size: int = 32) -> dict[str, torch.Tensor]:
    y = torch.zeros(2, 1, size, size)
    y[:, :, 4:28, 4:14] = 1
    y[:, :, 4:28, 18:28] = 1  # two fields 4 px apart
    _, boundary, distance = delineation_targets(y[0, 0].numpy().astype(bool))
    aux = torch.from_numpy(np.stack([boundary.astype(np.float32), distance]))[None].repeat(2, 1, 1, 1)
    weight = torch.ones_like(y)
    weight[:, :, :2] = 0  # an ignored strip
    return {"x": torch.rand(2, 2, 3, size // 4, size // 4), "y": y, "weight": weight, "aux": aux}


def test_registered_as_a_deep_model_with_three_outputs() -> None:
    assert "unet-delineation" in DEEP_MODELS and DELINEATION_MODELS == ("unet-delineation",)
    model = _model()
    assert model.n_outputs == 3 and model.output_names == DELINEATION_OUTPUTS
    out = model(torch.rand(2, 2, 3, 16, 16))
    assert out.shape == (2, 3, 64, 64)
    # the extra heads cost one 1x1 conv's two extra output channels over U-Net-TC
    torch.manual_seed(0)
    binary = create_model("unet-tc", n_frames=2, n_bands=3, base_width=4)
    assert model.n_parameters - binary.n_parameters == 2 * (4 + 1)
    assert model.config["boundary_pos_weight"] == 2.0
    with pytest.raises(ValueError, match="boundary_pos_weight"):
        _model(boundary_pos_weight=0)


def test_loss_by_hand_at_zero_logits() -> None:
    """At logit 0 every BCE term is ln 2 whatever the (soft) target: the loss is (1 + wb + wd) ln 2."""
    model = _model(boundary_weight=0.5, distance_weight=2.0)
    batch = _batch()
    outputs = torch.zeros(2, 3, 32, 32)
    total, norm = model.training_loss(outputs, batch)
    assert norm.item() == pytest.approx(batch["weight"].sum().item())
    assert (total / norm).item() == pytest.approx((1 + 0.5 + 2.0) * math.log(2), rel=1e-6)
    # the trainer's hook dispatch: the model's loss, and plain BCE for single-output models
    assert torch.equal(batch_loss(model, outputs, batch)[0], total)
    plain = torch.nn.Conv2d(1, 1, 1)
    single = torch.zeros(2, 1, 32, 32)
    expected = masked_bce_with_logits(single, batch["y"], batch["weight"])
    assert torch.equal(batch_loss(plain, single, batch)[0], expected[0])
    with pytest.raises(ValueError, match="boundary and distance targets"):
        model.training_loss(outputs, {k: v for k, v in batch.items() if k != "aux"})


def test_each_head_learns_its_target() -> None:
    """A few Adam steps on one batch lower every term: the gradients reach the three heads."""
    model = _model()
    batch = _batch()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def terms() -> list[float]:
        with torch.no_grad():
            model.eval()
            out = model(batch["x"])
            model.train()
        known = (batch["weight"] > 0).float()
        return [
            float(masked_bce_with_logits(out[:, i : i + 1], t, known)[0] / known.sum())
            for i, t in enumerate((batch["y"], batch["aux"][:, :1], batch["aux"][:, 1:]))
        ]

    before = terms()
    for _ in range(30):
        total, norm = model.training_loss(model(batch["x"]), batch)
        optimiser.zero_grad()
        (total / norm).backward()
        optimiser.step()
    after = terms()
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
    # validation metrics use the extent channel
    scores = evaluate(model, [batch])
    assert 0 < scores["n_pixels"] == int((batch["weight"] > 0).sum())
    assert np.isfinite(scores["loss"]) and -1 <= scores["weighted_mcc"] <= 1


def test_tiled_inference_gives_every_output() -> None:
    model = _model().eval()
    x = np.random.default_rng(0).random((2, 3, 24, 20), dtype=np.float32)
    outputs = predict_tiled_outputs(model, x, tile=8, halo=64)
    assert outputs.shape == (3, 96, 80) and outputs.dtype == np.float32
    assert outputs.min() >= 0 and outputs.max() <= 1
    np.testing.assert_array_equal(predict_tiled(model, x, tile=8, halo=64), outputs[0])
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.from_numpy(x)[None]))[0].numpy()
    assert np.abs(outputs - whole).max() < 0.05  # approximate halo of the U-Nets


def _touching_fields() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 30 x 30 px fields whose extents touch along a whole side: only the boundary splits them."""
    mask = np.zeros((40, 70), bool)
    mask[5:35, 5:65] = True
    left = np.zeros_like(mask)
    left[5:35, 5:35] = True
    right = mask & ~left
    _, boundary, _ = delineation_targets(left | right)
    boundary = boundary.astype(np.float32)
    boundary[5:35, 33:37] = 1.0  # the predicted line between the fields
    distance = np.maximum(delineation_targets(left)[2], delineation_targets(right)[2])
    return mask, boundary, distance


def test_delineation_instances_split_fields_the_mask_cannot() -> None:
    mask, boundary, distance = _touching_fields()
    assert watershed_instances(mask).max() == 1  # one rectangle: no neck to cut
    labels = delineation_instances(mask, boundary, distance)
    assert labels.max() == 2 and labels.dtype == np.int32
    assert ((labels > 0) == mask).all()
    assert (labels[5:35, 5:33] == labels[20, 15]).all() and (labels[5:35, 37:65] == labels[20, 55]).all()
    assert labels[20, 15] != labels[20, 55]
    # without a boundary the two cores merge into one field
    assert delineation_instances(mask, np.zeros_like(boundary), np.ones_like(distance)).max() == 1
    assert delineation_instances(np.zeros_like(mask), boundary, distance).max() == 0
    with pytest.raises(ValueError, match=r"one \(H, W\) shape"):
        delineation_instances(mask, boundary[:10], distance)
    with pytest.raises(ValueError, match="surface_h"):
        delineation_instances(mask, boundary, distance, surface_h=1.0)


def test_task_uses_the_predicted_boundaries_when_present() -> None:
    mask, boundary, distance = _touching_fields()
    patch = EOPatch(bbox=BBox((500000, 5000000, 500000 + 70 * 2.5, 5000000 + 40 * 2.5), CRS.UTM_33N))
    patch[PRED_CULTIVATED] = mask[..., None]
    InstanceSegmentationTask().execute(patch)
    assert patch[PRED_INSTANCES].max() == 1  # binary model: the mask's watershed
    patch[PRED_BOUNDARY] = boundary[..., None]
    patch[PRED_DISTANCE] = distance[..., None].astype(np.float32)
    InstanceSegmentationTask().execute(patch)
    assert patch[PRED_INSTANCES].max() == 2
    InstanceSegmentationTask(method="components").execute(patch)
    assert patch[PRED_INSTANCES].max() == 1
    with pytest.raises(ValueError, match="surface_h"):
        InstanceSegmentationTask(surface_h=0)

"""FG-UNet: shapes at 2.5 m, temporal groups with shared weights, receptive field, counts, training."""

from __future__ import annotations

import json

import pytest
import torch
from model_checks import overfit_losses, series
from torch.nn import functional as F  # noqa: N812 (torch convention)

from s2agri.models.fgunet import PAPER_CONFIG, RECEPTIVE_FIELD_10M, RECEPTIVE_REACH_10M, FGUNet
from s2agri.models.registry import available_models, create_model, model_summary

torch.set_num_threads(1)

#: A tiny FG-UNet: 4 frames of 12 bands in 2 groups, U-Net widths 4, 8, 16, 1x1 path 8, 4.
TINY = {"n_frames": 4, "groups": 2, "base_width": 4, "hidden": "8,4"}


def tiny(**kwargs: object) -> FGUNet:
    torch.manual_seed(0)
    return FGUNet(**{**TINY, **kwargs})


@pytest.mark.parametrize("size", [(13, 13), (32, 32), (1, 6)])
@pytest.mark.parametrize("groups", [1, 4])
def test_output_shape_and_dtype_at_2p5m(size: tuple[int, int], groups: int) -> None:
    model = tiny(groups=groups).eval()
    H, W = size
    x = series(2, 4, H, W)
    with torch.no_grad():
        out, features = model(x), model.group_features(x)
    assert out.shape == (2, 1, 4 * H, 4 * W) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert features.shape == (2, groups, 4 + 4, H, W)  # U-Net w = 4 + 1x1 path 4 per group


def test_groups_must_divide_the_frames() -> None:
    with pytest.raises(ValueError, match="divisible by groups"):
        FGUNet(n_frames=20, groups=3)
    with pytest.raises(ValueError, match="n_frames"):
        tiny()(series(1, 6, 8, 8))


def test_default_groups_are_the_largest_divisor_of_the_frames_up_to_5() -> None:
    assert [FGUNet(n_frames=t).groups for t in (20, 6, 8, 7, 3)] == [5, 3, 4, 1, 3]
    with pytest.raises(ValueError, match=r"set train.params.groups to a divisor of 6"):
        FGUNet(n_frames=6, groups=4)


def test_groups_share_one_network() -> None:
    """Swapping two groups' frames swaps their features; each group's are the network on it alone."""
    model = tiny(groups=4).eval()
    x = series(2, 4, 9, 10, seed=1)
    swapped = x[:, [2, 1, 0, 3]]
    with torch.no_grad():
        features, features_swapped = model.group_features(x), model.group_features(swapped)
        torch.testing.assert_close(features_swapped, features[:, [2, 1, 0, 3]], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(swapped), model(x))  # the fusion tells the groups apart
        alone = torch.cat([model.unet_features(x[:, 3]), model.pixel_path(x[:, 3])], dim=1)
    torch.testing.assert_close(features[:, 3], alone, rtol=1e-5, atol=1e-6)


def test_parameters_depend_on_groups_only_through_input_width_and_fusion() -> None:
    # T / G * C input channels per group: 2 groups of 2 frames equal 4 groups of 2 frames, bar the
    # fusion conv, whose weights are G * (w + 4) features * w outputs: 2 more groups * 8 * 4.
    two, four = tiny(n_frames=4, groups=2), tiny(n_frames=8, groups=4)
    shared = ("unet", "pixel_path", "head", "out")
    for name in shared:
        assert sum(p.numel() for p in getattr(two, name).parameters()) == sum(
            p.numel() for p in getattr(four, name).parameters()
        )
    assert four.n_parameters - two.n_parameters == 2 * 8 * 4


def test_receptive_field_of_the_unet_path() -> None:
    """A perturbed input pixel moves a 44 px wide span of the 10 m U-Net features, at every phase."""
    model = tiny(groups=1).double().eval()
    x = series(1, 4, 64, 64, seed=2).double()
    with torch.no_grad():
        base = model.group_features(x)[0, 0]
        reach = 0
        for phase in range(4):  # the poolings make the response depend on the position modulo 4
            row, col = 28 + phase, 30 + (3 - phase)
            y = x.clone()
            y[..., row, col] += 1e-3
            moved = (model.group_features(y)[0, 0] - base).abs() > 1e-12
            unet, pixel = moved[:4].any(dim=0), moved[4:].any(dim=0)
            rows, cols = unet.any(dim=1).nonzero().flatten(), unet.any(dim=0).nonzero().flatten()
            assert int(rows[-1] - rows[0]) + 1 == RECEPTIVE_FIELD_10M == 44
            assert int(cols[-1] - cols[0]) + 1 == 44
            reach = max(
                reach, row - int(rows[0]), int(rows[-1]) - row, col - int(cols[0]), int(cols[-1]) - col
            )
            assert pixel.nonzero().tolist() == [[row, col]]  # the 1x1 path is per pixel
    assert reach == RECEPTIVE_REACH_10M == 23
    assert model.receptive_halo_2p5m == 4 * 23 + 1 and not model.halo_is_exact


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # T = 4, C = 3, G = 2: 6 channels per group; w = 2 (U-Net 2, 4, 8); 1x1 path "4".
        # Batch norm: a 3x3 conv has 9 * in * out weights and no bias, its batch norm 2 * out.
        # U-Net: inc 6->2: 108+4 + 36+4 = 152; down 2->4: 72+8 + 144+8 = 232;
        # down 4->8: 288+16 + 576+16 = 896; up 8+4->4: 432+8 + 144+8 = 592; up 4+2->2: 108+4 + 36+4 = 152
        # = 2,024. 1x1 path 6*4 + 4 = 28. Fusion 2 groups * (2 + 4) -> 2: 24 + 2 = 26.
        # Head 3x3 2->2: 36 + BN 4 = 40. Output 2 + 1 = 3. Total 2,121.
        ({"batch_norm": True}, 2_024 + 28 + 26 + 40 + 3),
        # Without batch norm every 3x3 conv has a bias of out instead of 2 * out:
        # U-Net 110+38 + 76+148 + 296+584 + 436+148 + 110+38 = 1,984; head 36 + 2.
        ({"batch_norm": False}, 1_984 + 28 + 26 + 38 + 3),
    ],
)
def test_parameter_counts_of_a_tiny_config(kwargs: dict, expected: int) -> None:
    model = FGUNet(n_frames=4, n_bands=3, groups=2, base_width=2, hidden="4", **kwargs)
    assert model.n_parameters == expected
    assert model_summary(model)["n_parameters"] == expected


def test_parameter_counts_reproduce_seed_003() -> None:
    """Seed 003 Table 2 (T = 33 dates x C = 10 bands, G = 11 groups, 17 classes, no batch norm)."""
    model = FGUNet(n_frames=33, n_bands=10, groups=11, base_width=32, batch_norm=False)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # "U-Net 3 steps" 485,297 = U-Net + its classifier 11 groups * 32 features -> 17 classes.
    assert count(model.unet) == 485_297 - (11 * 32 * 17 + 17) == 479_296
    # FG-UNet 525,997 = U-Net + 1x1 path + classifier on 11 * (32 + 50) features -> 17 classes.
    assert count(model.pixel_path) == 525_997 - 479_296 - (11 * 82 * 17 + 17) == 31_350
    # Here: fusion 902 -> 32, x4 head (3x3 conv 32 -> 32 with bias) and 1 logit instead.
    assert model.n_parameters == 479_296 + 31_350 + (902 * 32 + 32) + (9 * 32 * 32 + 32) + 33 == 548_823
    assert FGUNet(**PAPER_CONFIG).n_parameters == 543_943
    assert FGUNet().n_parameters == 167_655


def test_gradients_reach_every_parameter() -> None:
    model = tiny()
    x = series(2, 4, 9, 11, seed=3)
    target = (torch.rand(2, 1, 36, 44, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    F.binary_cross_entropy_with_logits(model(x), target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_eval_mode_is_deterministic_and_per_sample() -> None:
    model = tiny()
    model.train()
    model(series(4, 4, 16, 16, seed=4))  # moves the batch-norm running statistics
    model.eval()
    x = series(3, 4, 13, 10, seed=5)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-5)


def test_registry_and_json_config() -> None:
    assert "fg-unet" in available_models()
    model = create_model("fg-unet", **TINY, scale=2)
    rebuilt = create_model("fg-unet", **json.loads(json.dumps(model.config)))
    assert rebuilt.name == "fg-unet" and rebuilt.config == model.config
    assert rebuilt.eval()(series(1, 4, 5, 7)).shape == (1, 1, 10, 14)


def test_overfits_a_fixed_batch() -> None:
    """60 Adam steps on one 2-sample 16 x 16 px batch more than halve the BCE loss."""
    model = tiny()
    losses = overfit_losses(model, 4, steps=60, lr=1e-2, seed=6)
    assert losses[-1] < 0.5 * losses[0], losses[::10]

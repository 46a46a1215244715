"""DeepLabv3 baseline (seed 001): shapes, parameter counts, ASPP, global context, temporal mean."""

from __future__ import annotations

import json

import pytest
import torch
from model_checks import fit_losses, series
from torch.nn import functional as F  # noqa: N812

import s2agri.models.deeplab  # noqa: F401 (registers "deeplab" until the registry lists the module)
from s2agri.models.deeplab import PAPER_CONFIG, DeepLabV3
from s2agri.models.registry import create_model, model_summary

torch.set_num_threads(1)

#: A tiny network: widths 2..16 (basic blocks), ASPP 2 at rates 1, 2, 3, output stride 16.
TINY = {
    "n_bands": 2,
    "base_width": 2,
    "blocks": "1,1,1,1",
    "output_stride": 16,
    "aspp_width": 2,
    "atrous_rates": "1,2,3",
    "low_level_width": 1,
    "temporal_groups": 1,
}
SMALL = {
    "base_width": 4,
    "blocks": "1,1,1,1",
    "aspp_width": 8,
    "low_level_width": 4,
    "dropout": 0.0,
    "temporal_groups": 1,
}


@pytest.mark.parametrize("size", [13, 32])
@pytest.mark.parametrize("kwargs", [SMALL, {**SMALL, "output_stride": 16, "decoder": False}])
def test_output_shape_and_dtype(size: int, kwargs: dict) -> None:
    model = DeepLabV3(**kwargs).eval()
    with torch.no_grad():
        out = model(series(2, 3, size, size))
    assert out.shape == (2, 1, 4 * size, 4 * size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_parameter_counts() -> None:
    # Stem 7x7 2->2 + BN: 2*2*49 + 4 = 200. Stage 1 (2->2): 2 x (2*2*9 + 4) = 80.
    # Stage 2 (2->4, stride 2): 2*4*9 + 8 + 4*4*9 + 8 + shortcut 2*4 + 8 = 248.
    # Stage 3 (4->8, stride 2): 4*8*9 + 16 + 8*8*9 + 16 + 4*8 + 16 = 944.
    # Stage 4 (8->16, dilated): 8*16*9 + 32 + 16*16*9 + 32 + 8*16 + 32 = 3680. Backbone 5152.
    # ASPP (16 -> 2): 1x1 16*2 + 4 = 36; 3 atrous 3 * (16*2*9 + 4) = 876; pooling 36;
    #   projection 5*2*2 + 4 = 24: 972.
    # Decoder: low level 1x1 2->1 + BN = 4; 3x3 (2+1)->2 + BN = 58; 3x3 2->2 + BN = 40;
    #   classifier 2 + 1 = 3.
    assert DeepLabV3(**TINY).n_parameters == 5152 + 972 + 4 + 58 + 40 + 3 == 6229
    # DeepLabv3 head instead: 3x3 2->2 + BN = 40, classifier 3.
    assert DeepLabV3(**TINY, decoder=False).n_parameters == 5152 + 972 + 40 + 3
    # Bottleneck stage 1 (2 -> 2 -> 8): 1x1 2*2 + 4, 3x3 2*2*9 + 4, 1x1 2*8 + 16, shortcut 2*8 + 16.
    one_bottleneck = DeepLabV3(**TINY, block="bottleneck").backbone.stages[0]
    assert sum(p.numel() for p in one_bottleneck.parameters()) == 8 + 40 + 32 + 32
    # The CPU default reads 4 temporal groups: its stem sees 4 x 12 channels, 36 * 16 * 49 more weights
    # than the 1,051,521 of the plain temporal mean.
    default = DeepLabV3()
    assert DeepLabV3(temporal_groups=1).n_parameters == 1_051_521
    assert default.n_parameters == 1_051_521 + 36 * 16 * 49 == 1_079_745
    assert model_summary(default)["n_parameters"] == 1_079_745


def test_paper_config_count() -> None:
    # torchvision's deeplabv3_resnet50 without aux head: ResNet-50 23,508,032 + DeepLabHead(2048, 21)
    # 16,130,837 = 39,638,869; with 1 class (-5,397 + 257) and a 12-band stem (+ 9 * 64 * 49).
    model = DeepLabV3(**PAPER_CONFIG)
    assert model.n_parameters == 39_638_869 - 5_397 + 257 + 9 * 64 * 49 == 39_661_953
    assert model.rates == (12, 24, 36)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = DeepLabV3(**TINY)
    x = series(2, 3, 32, 32, C=2)
    target = (torch.rand(2, 1, 128, 128) > 0.5).float()
    F.binary_cross_entropy_with_logits(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_eval_mode_is_deterministic_and_per_sample() -> None:
    model = DeepLabV3(**{**SMALL, "dropout": 0.3})
    model.train()
    model(series(4, 2, 16, 16, seed=3))  # moves the batch-norm running statistics
    model.eval()
    x = series(3, 2, 13, 18, seed=4)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-5)


def test_registry_and_json_config() -> None:
    model = create_model("deeplab", **json.loads(json.dumps(TINY)))
    assert isinstance(model, DeepLabV3) and model.name == "deeplab"
    assert create_model("deeplab", **model.config).n_parameters == model.n_parameters
    assert model.receptive_halo_2p5m == 64 and not model.halo_is_exact
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3(output_stride=32)
    with pytest.raises(ValueError, match="4 stages"):
        DeepLabV3(blocks="1,1,1")
    with pytest.raises(ValueError, match="bands"):
        model(series(1, 2, 8, 8, C=3))


@pytest.mark.parametrize(("output_stride", "rates"), [(8, (12, 24, 36)), (16, (6, 12, 18))])
def test_aspp_branches(output_stride: int, rates: tuple[int, ...]) -> None:
    model = DeepLabV3(**SMALL, output_stride=output_stride).eval()
    assert model.rates == rates
    branches = model.aspp.branches
    assert len(branches) == 5
    assert [b[0].dilation[0] for b in branches[1:4]] == list(rates)
    assert [b[0].kernel_size for b in branches[:4]] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    image = torch.rand(2, 12, 128, 96)
    with torch.no_grad():
        low, deep = model.backbone(image)
        assert low.shape == (2, 4, 32, 24)
        assert deep.shape == (2, 32, 128 // output_stride, 96 // output_stride)
        outputs = [branch(deep) for branch in branches]
        for out in outputs:
            assert out.shape == (2, 8, *deep.shape[-2:])
        pooled = outputs[-1]  # image pooling: one value per channel, broadcast
        assert torch.equal(pooled, pooled[..., :1, :1].expand_as(pooled))
        assert model.aspp(deep).shape == (2, 8, *deep.shape[-2:])


def test_image_pooling_gives_global_context() -> None:
    """A far-away input pixel, beyond the convolutions' reach, moves the output via image pooling."""
    torch.manual_seed(1)
    model = DeepLabV3(**{**SMALL, "output_stride": 16, "atrous_rates": "1,1,1", "decoder": False}).eval()

    def far_gradient() -> torch.Tensor:
        x = series(1, 2, 64, 64, seed=5).requires_grad_(True)
        model(x)[0, 0, 0, 0].backward()
        return x.grad[..., 48:, 48:].abs().sum()  # >= 48 px at 10 m (192 px at 2.5 m) away

    assert far_gradient() > 0
    with torch.no_grad():
        model.aspp.branches[-1].project[0].weight.zero_()  # image pooling -> a constant
    assert far_gradient() == 0


def test_temporal_mean_is_permutation_invariant_and_skips_empty_frames() -> None:
    model = DeepLabV3(**SMALL).eval()
    x = series(2, 5, 9, 11, seed=6)
    x[:, 1, :, 2:5, 3:6] = 0  # cloudy observations, zero-filled by the pipeline
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model(x[:, [3, 0, 4, 2, 1]]), out, rtol=1e-5, atol=1e-5)
        padded = torch.cat([x, torch.zeros_like(x[:, :2])], dim=1)  # all-zero padding frames
        torch.testing.assert_close(model(padded), out, rtol=1e-5, atol=1e-5)
        valid = (x != 0).any(dim=2)
        torch.testing.assert_close(model(x, valid), out)
        # the masked mean: zeros excluded; without a mask they pull the mean down
        mean = model.temporal_mean(x)
        torch.testing.assert_close(mean[:, :, 3, 4], x[:, [0, 2, 3, 4], :, 3, 4].mean(dim=1))
        plain = DeepLabV3(**SMALL, masked_mean=False)
        torch.testing.assert_close(plain.temporal_mean(x), x.mean(dim=1))
        assert model.temporal_mean(torch.zeros(1, 2, 12, 3, 3)).abs().sum() == 0  # never valid -> 0
    with pytest.raises(ValueError, match="valid"):
        model(x, valid[:, :2])


def test_temporal_groups_are_means_of_consecutive_frames() -> None:
    model = DeepLabV3(**{**SMALL, "temporal_groups": 3}).eval()
    x = series(2, 7, 4, 5, seed=9)
    x[:, 5, :, 1, 2] = 0  # one cloudy observation in the last group
    means = model.temporal_mean(x)
    assert means.shape == (2, 3 * 12, 4, 5)
    # frame t -> group t * 3 // 7: frames 0-2, 3-4, 5-6; group-major channels
    torch.testing.assert_close(means[:, :12], x[:, 0:3].mean(dim=1))
    torch.testing.assert_close(means[:, 12:24], x[:, 3:5].mean(dim=1))
    torch.testing.assert_close(means[:, 24:, 1, 2], x[:, 6, :, 1, 2])  # the zero frame is skipped
    torch.testing.assert_close(means[:, 24:, 0, 0], x[:, 5:7, :, 0, 0].mean(dim=1))
    # fewer frames than groups: frames 0, 1 -> groups 0, 1; the empty group 2 is 0
    two = model.temporal_mean(x[:, :2])
    assert two[:, 24:].abs().sum() == 0
    torch.testing.assert_close(two[:, :24], x[:, :2].flatten(1, 2))
    with torch.no_grad():
        assert model(x).shape == (2, 1, 16, 20)
    with pytest.raises(ValueError, match="temporal_groups"):
        DeepLabV3(temporal_groups=0)


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = DeepLabV3(**SMALL)
    x = series(2, 3, 16, 16, seed=7)
    target = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(8)) > 0.5).float()
    target = target.repeat_interleave(8, -1).repeat_interleave(8, -2)  # 8 x 8 blocks at 2.5 m
    losses = fit_losses(model, x, target, steps=80, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses[::10]

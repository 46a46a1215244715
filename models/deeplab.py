"""DeepLabv3 baseline of seed 001 on bicubic, temporally averaged images: (B, T, C, H, W) -> (B, 1, 4H, 4W).

Seed 001 (SPInet, section 3.2 and Table 1) compares SPInet with "DeepLabv3 [10] applied on the
bicubically-interpolated and temporally-averaged images" (avg MCC 0.683 on 10 validation boxes,
SPInet 0.802) and gives no further detail. This module:

1. **Temporal mean** of the T frames. The data pipeline fills invalid (cloudy, no-data, padded)
   observations with 0 in every band, so with ``masked_mean=True`` (default) a pixel-frame whose C
   bands are all exactly 0 counts as missing, unless ``forward`` gets an explicit ``valid``
   (B, T, H, W) mask: the mean is then over the valid frames of each pixel, and a pixel without
   any is 0. (A valid observation at or below the low percentile in all 12 bands at once is also
   taken as missing.) ``masked_mean=False`` is the plain mean over T, zeros included. Either mean
   is invariant to the order of the frames. ``temporal_groups=G > 1`` splits the T frames, in time
   order, into G consecutive groups of nearly equal size (frame t goes to group ``t * G // T``) and
   takes the (masked) mean within each group: G * C channels that keep the crop calendar, which a
   mean over the whole season throws away (on the simulated boxes the plain mean scores below the
   per-frame LightGBM). The CPU default is G = 4 (seasonal means; with ``deep.inputs: monthly``, G =
   6 gives one group per month); :data:`PAPER_CONFIG` keeps the seed's plain mean (G = 1). Only G = 1
   is invariant to the order of the frames.
2. **Bicubic ×``scale``** of the mean image to 2.5 m (:func:`s2agri.models.gcnn.upsample_bicubic`).
3. **ResNet backbone** (He et al. 2016) written here (no torchvision): a 7x7 stride-2 conv + batch
   norm + ReLU and a 3x3 stride-2 max pool, then four stages of ``blocks`` residual blocks, basic
   (two 3x3 convs, ResNet-18/34) or bottleneck (1x1, 3x3, 1x1 with 4x expansion, ResNet-50), of
   widths w, 2w, 4w, 8w and strides 1, 2, 2, 2. As in DeepLabv3, the strides of the last stages
   become dilations: output stride 8 (stages 3, 4 dilated by 2, 4; torchvision's DeepLabv3) or 16
   (stage 4 dilated by 2); the first block of a dilated stage keeps the previous dilation.
4. **ASPP** (Chen et al. 2017, DeepLabv3 section 3.3): a 1x1 conv, three 3x3 atrous convs at
   ``atrous_rates`` (6, 12, 18 for output stride 16, doubled for 8), image pooling (global average,
   1x1 conv, broadcast back), each + batch norm + ReLU, concatenated and projected by a 1x1 conv +
   batch norm + ReLU + dropout. The image pooling branch gives every output pixel the context of
   the whole input.
5. **Head**: ``decoder=True`` (default), the DeepLabv3+ decoder (Chen et al. 2018): ASPP features
   bilinearly up-sampled to the stride-4 features of stage 1, concatenated with their 1x1
   projection to ``low_level_width`` channels, two 3x3 convs + batch norm + ReLU, a 1x1 conv to the
   logits, bilinear ×4 to the 2.5 m grid. ``decoder=False``, torchvision's DeepLabv3 head: a 3x3
   conv + batch norm + ReLU and a 1x1 conv on the ASPP features, bilinear up to the 2.5 m grid.

Any H, W works (convolutions round up, the up-samplings go to the exact sizes). In training mode
the batch norm of the image pooling branch sees one value per channel and item: train with
batches of at least 2.

Parameters (measured, 12 bands): the CPU default (``base_width=16``, basic blocks ``"2,2,2,2"``,
output stride 8, ASPP width 64, decoder, 4 temporal groups) has 1,079,745 (1,051,521 with one
temporal group: the stem reads 12 instead of 48 channels); :data:`PAPER_CONFIG` (ResNet-50 layout at
width 64, output stride 8, ASPP 256, torchvision's DeepLabv3 head, the likely setting of seed 001,
which does not state it) has 39,661,953 = torchvision's ``deeplabv3_resnet50`` without the
auxiliary head with one class (39,638,869 - 5,397 + 257) and a 12-band stem (+ 9 * 64 * 49).

Tiling: the image pooling branch makes the output depend on the whole input, and the dilated
stages and ASPP reach hundreds of 2.5 m pixels, so no halo is exact.
:attr:`DeepLabV3.receptive_halo_2p5m` = 64 (16 px at 10 m) is an approximate halo;
``halo_is_exact`` is False.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (torch convention)

from .gcnn import parse_widths, upsample_bicubic
from .registry import register_model

#: torchvision's deeplabv3_resnet50 (ResNet-50, output stride 8, ASPP 256 at rates 12/24/36, no decoder).
PAPER_CONFIG: dict[str, Any] = {
    "base_width": 64,
    "blocks": "3,4,6,3",
    "block": "bottleneck",
    "output_stride": 8,
    "aspp_width": 256,
    "decoder": False,
    "dropout": 0.5,
    "temporal_groups": 1,
}
#: ASPP atrous rates at output stride 16 (DeepLabv3); scaled by 16 / output_stride.
ASPP_RATES = "6,12,18"
OUTPUT_STRIDES = (8, 16)
BLOCK_TYPES = ("basic", "bottleneck")


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv (no bias, "same" padding for stride 1) + batch norm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv (no bias) + batch norm, no activation: the last layer of a residual branch."""
    conv, norm, _ = conv_bn_relu(in_channels, out_channels, kernel_size, stride, dilation)
    return nn.Sequential(conv, norm)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 (stride, dilation) + BN + ReLU, 3x3 + BN, identity or 1x1 shortcut, ReLU."""

    expansion: ClassVar[int] = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.residual = self._residual(in_channels, width, stride, dilation)
        self.shortcut = (
            _conv_bn(in_channels, out, 1, stride) if stride != 1 or in_channels != out else nn.Identity()
        )

    @staticmethod
    def _residual(in_channels: int, width: int, stride: int, dilation: int) -> nn.Sequential:
        return nn.Sequential(
            conv_bn_relu(in_channels, width, 3, stride, dilation), _conv_bn(width, width, 3, 1, dilation)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu_(self.residual(x) + self.shortcut(x))


class Bottleneck(BasicBlock):
    """ResNet-50 block (v1.5, stride on the 3x3): 1x1, 3x3 (stride, dilation), 1x1 to 4 x width."""

    expansion: ClassVar[int] = 4

    @staticmethod
    def _residual(in_channels: int, width: int, stride: int, dilation: int) -> nn.Sequential:
        return nn.Sequential(
            conv_bn_relu(in_channels, width, 1),
            conv_bn_relu(width, width, 3, stride, dilation),
            _conv_bn(width, width * Bottleneck.expansion, 1),
        )


class ResNetBackbone(nn.Module):
    """Stem and four residual stages; returns the stride-4 (stage 1) and the deepest features."""

    def __init__(
        self, in_channels: int, base_width: int, blocks: tuple[int, ...], block: str, output_stride: int
    ) -> None:
        super().__init__()
        block_cls = Bottleneck if block == "bottleneck" else BasicBlock
        self.stem = nn.Sequential(
            conv_bn_relu(in_channels, base_width, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)
        )
        dilated = {8: (False, False, True, True), 16: (False, False, False, True)}[output_stride]
        stages: list[nn.Module] = []
        channels, dilation = base_width, 1
        for i, (n_blocks, dilate) in enumerate(zip(blocks, dilated, strict=True)):
            width = base_width * 2**i
            stride = 1 if i == 0 or dilate else 2
            first_dilation = dilation
            if dilate:
                dilation *= 2
            layers = [block_cls(channels, width, stride, first_dilation)]
            channels = width * block_cls.expansion
            layers += [block_cls(channels, width, 1, dilation) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.low_level_channels = base_width * block_cls.expansion
        self.out_channels = channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        low = x = self.stages[0](x)
        for stage in self.stages[1:]:
            x = stage(x)
        return low, x


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool, 1x1 conv + BN + ReLU, broadcast to the input size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.project = conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.project(x.mean(dim=(-2, -1), keepdim=True))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, 3x3 at each rate, image pooling; concat, 1x1, dropout."""

    def __init__(self, in_channels: int, width: int, rates: tuple[int, ...], dropout: float = 0.0) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                conv_bn_relu(in_channels, width, 1),
                *(conv_bn_relu(in_channels, width, 3, dilation=r) for r in rates),
                ImagePooling(in_channels, width),
            ]
        )
        self.project = nn.Sequential(conv_bn_relu(width * len(self.branches), width, 1), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


@register_model("deeplab")
class DeepLabV3(nn.Module):
    """DeepLabv3(+) on the bicubic ×``scale``, temporally averaged series; see the module docstring.

    Args:
        n_bands: bands C per frame (12 Sentinel-2 bands).
        base_width: width w of the first ResNet stage (stages w, 2w, 4w, 8w; x4 for bottlenecks).
        blocks: residual blocks per stage, comma-separated (ResNet-18 ``"2,2,2,2"``, -50 ``"3,4,6,3"``).
        block: ``"basic"`` or ``"bottleneck"`` residual blocks.
        output_stride: 8 or 16, the backbone's down-sampling (the rest is dilation).
        aspp_width: channels of every ASPP branch and of the head.
        atrous_rates: ASPP rates at output stride 16, comma-separated (x2 at output stride 8).
        decoder: DeepLabv3+ decoder with the stride-4 features (True) or DeepLabv3's head (False).
        low_level_width: channels of the projected stride-4 features in the decoder.
        dropout: dropout after the ASPP projection.
        scale: super-resolution factor of the bicubic input up-sampling (4: 10 m -> 2.5 m).
        masked_mean: average the valid (not all-zero) frames of each pixel only.
    """

    name: ClassVar[str] = "deeplab"
    #: Approximate halo in 2.5 m px (16 px at 10 m); the image pooling branch sees the whole input.
    receptive_halo_2p5m: int = 64
    halo_is_exact: ClassVar[bool] = False

    def __init__(
        self,
        n_bands: int = 12,
        base_width: int = 16,
        blocks: str = "2,2,2,2",
        block: str = "basic",
        output_stride: int = 8,
        aspp_width: int = 64,
        atrous_rates: str = ASPP_RATES,
        decoder: bool = True,
        low_level_width: int = 16,
        dropout: float = 0.1,
        scale: int = 4,
        masked_mean: bool = True,
        temporal_groups: int = 4,
    ) -> None:
        super().__init__()
        stage_blocks, rates = parse_widths(blocks), parse_widths(atrous_rates)
        if len(stage_blocks) != 4:
            raise ValueError(f"blocks must give 4 stages, got {blocks!r}")
        if block not in BLOCK_TYPES or output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"block must be one of {BLOCK_TYPES} and output_stride one of {OUTPUT_STRIDES}, "
                f"got {block!r} and {output_stride!r}"
            )
        if (
            min(n_bands, base_width, aspp_width, low_level_width, scale, temporal_groups) < 1
            or not 0 <= dropout < 1
        ):
            raise ValueError(
                "need positive n_bands, base_width, aspp_width, low_level_width, scale, temporal_groups "
                "and 0 <= dropout < 1"
            )
        self.temporal_groups = int(temporal_groups)
        self.n_bands, self.scale, self.masked_mean = int(n_bands), int(scale), bool(masked_mean)
        self.decoder = bool(decoder)
        self.config: dict[str, Any] = {
            "n_bands": self.n_bands,
            "base_width": int(base_width),
            "blocks": ",".join(map(str, stage_blocks)),
            "block": block,
            "output_stride": int(output_stride),
            "aspp_width": int(aspp_width),
            "atrous_rates": ",".join(map(str, rates)),
            "decoder": self.decoder,
            "low_level_width": int(low_level_width),
            "dropout": float(dropout),
            "scale": self.scale,
            "masked_mean": self.masked_mean,
            "temporal_groups": self.temporal_groups,
        }
        in_channels = self.n_bands * self.temporal_groups
        self.backbone = ResNetBackbone(in_channels, base_width, stage_blocks, block, output_stride)
        #: ASPP rates at this output stride.
        self.rates = tuple(r * 16 // output_stride for r in rates)
        self.aspp = ASPP(self.backbone.out_channels, aspp_width, self.rates, dropout)
        if self.decoder:
            self.low_level = conv_bn_relu(self.backbone.low_level_channels, low_level_width, 1)
            self.head = nn.Sequential(
                conv_bn_relu(aspp_width + low_level_width, aspp_width, 3),
                conv_bn_relu(aspp_width, aspp_width, 3),
            )
        else:
            self.head = conv_bn_relu(aspp_width, aspp_width, 3)
        self.classifier = nn.Conv2d(aspp_width, 1, 1)

    def temporal_mean(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) -> (B, G * C, H, W): mean over the valid frames (or all, ``masked_mean=False``)
        of each of the G = ``temporal_groups`` consecutive groups of frames, group-major.

        ``valid`` (B, T, H, W) bool; None takes the pixel-frames that are not all zero as valid.
        A group without a valid frame at a pixel (or without frames, T < G) is 0 there.
        """
        if x.ndim != 5 or x.shape[1] == 0:
            raise ValueError(f"x must have shape (B, T, C, H, W) with T > 0, got {tuple(x.shape)}")
        if x.shape[2] != self.n_bands:
            raise ValueError(f"{self.name} takes {self.n_bands} bands per frame, got {x.shape[2]}")
        if valid is None:
            valid = (x != 0).any(dim=2) if self.masked_mean else torch.ones_like(x[:, :, 0], dtype=torch.bool)
        elif valid.shape != (*x.shape[:2], *x.shape[3:]):
            raise ValueError(f"valid has shape {tuple(valid.shape)}, expected (B, T, H, W) of x")
        n_frames, groups = x.shape[1], self.temporal_groups
        frame_group = torch.arange(n_frames, device=x.device) * groups // n_frames
        assign = (frame_group == torch.arange(groups, device=x.device)[:, None]).to(x.dtype)  # (G, T)
        weight = valid.to(x.dtype)
        sums = torch.einsum("gt,btchw->bgchw", assign, x * weight.unsqueeze(2))
        counts = torch.einsum("gt,bthw->bghw", assign, weight).unsqueeze(2)
        return (sums / counts.clamp_min(1)).flatten(1, 2)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) float 10 m series -> (B, 1, scale H, scale W) logits at 2.5 m."""
        image = upsample_bicubic(self.temporal_mean(x, valid), self.scale)
        size = image.shape[-2:]
        low, deep = self.backbone(image)
        features = self.aspp(deep)
        if self.decoder:
            features = F.interpolate(features, size=low.shape[-2:], mode="bilinear", align_corners=False)
            features = torch.cat([features, self.low_level(low)], dim=1)
        logits = self.classifier(self.head(features))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters() if p.requires_grad)

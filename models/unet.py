"""U-Net-B and U-Net-TC of seed 000: (B, T, C, H, W) 10 m series -> (B, 1, 4H, 4W) logits at 2.5 m.

Ronneberger's topology as in the widely used PyTorch U-Net the paper's parameter counts point to
(milesial/Pytorch-UNet): an input block and 4 down-samplings (2x2 max pooling), each followed by a
double 3x3 convolution with batch norm and ReLU after every 3x3 conv, widths w, 2w, 4w, 8w, 16w;
an expansive path of 4 up-samplings, each concatenated with the skip connection of its level and
followed by a double 3x3 convolution; then a super-resolution head to ``scale`` x the input:

* ``unet-b`` (:class:`UNetB`): bicubic x2 up-sampling in the expansive path (the bottleneck and the
  up blocks halve their widths, as the bilinear variant of that U-Net does), then bicubic
  x``scale``, a 3x3 conv + batch norm + ReLU at 2.5 m and a 1x1 conv to the logits;
* ``unet-tc`` (:class:`UNetTC`): 2x2 stride-2 transposed convolutions in the expansive path, then
  log2(``scale``) stride-2 transposed convolutions (each + batch norm + ReLU) and a 1x1 conv.

Input: the T frames stacked along the spectral axis, T * C channels, so the number of frames is
fixed (``n_frames``; the trainer selects or zero-pads that many). With ``pooled_features=k > 0``
the stack is instead adaptive max pooled to k channels, as in the GCNN, so any T works: the paper
fed its U-Nets k = 80 pooled features. :data:`PAPER_CONFIG` (``base_width=64``, k = 80) gives
17,344,321 (U-Net-B) and 31,115,137 (U-Net-TC) parameters; the paper reports 17.3 M and 31.1 M
but not its x4 head: this one adds 36,992 (B) and 33,152 (TC) parameters to the same U-Net with a
1x1 output conv (17,307,329 and 31,081,985). The CPU default ``base_width=16`` with 20 frames
(240 channels) has 1,117,393 (B) and 1,978,849 (TC) parameters.

Sizes that are not multiples of 16 are padded at the bottom and right by replicating the last
row / column, and the output is cropped back to (scale H, scale W). Top-left alignment keeps the
pooling grid fixed relative to the input's origin. In training mode batch norm needs more than
one value per channel at the 1/16 bottleneck: a batch of one needs inputs over 16 px.

Tiling: in eval mode (batch norm with running statistics) the network is a fixed function of its
input, but the 4 poolings make it equivariant only to shifts by multiples of 16 px, its theoretical
receptive field spans well over 100 px at 10 m, and zero padding marks every tile border, so no
practical halo is exact. :attr:`UNet.receptive_halo_2p5m` = 64 (16 px at 10 m, FG-UNet's tile
overlap) is an approximate, effective halo; ``halo_is_exact`` is False.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (torch convention)

from .gcnn import adaptive_max_pool_channels, stack_frames
from .registry import register_model

#: Constructor arguments of the paper's configuration (widths 64 .. 1024, 80 pooled features).
PAPER_CONFIG: dict[str, Any] = {"base_width": 64, "pooled_features": 80}
#: Number of 2x2 poolings: H and W are padded to multiples of 2**DEPTH.
DEPTH = 4


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias, batch norm, ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """x2 up-sampling of the deeper features, concatenation with the skip, double conv.

    ``in_channels`` is the width after concatenation. Bicubic: the deeper features already have
    ``in_channels // 2`` channels and the double conv narrows through ``in_channels // 2``;
    transposed: a 2x2 stride-2 transposed conv maps ``in_channels`` to ``in_channels // 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, upsampling: str) -> None:
        super().__init__()
        if upsampling == "bicubic":
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net segmenter with a x``scale`` super-resolution head; see the module docstring.

    Args:
        n_frames: frames T of the input when ``pooled_features`` is 0 (input channels T * C).
        n_bands: bands C per frame (12 Sentinel-2 bands).
        base_width: width of the first level (paper: 64, widths 64 .. 1024; CPU default 16).
        scale: output pixels per input pixel along each axis (4: 10 m -> 2.5 m).
        pooled_features: k > 0 max pools the T * C stack to k channels (any T); 0 uses it as is.
    """

    name: ClassVar[str] = "unet"
    #: "bicubic" or "transposed": how the expansive path and the head up-sample.
    upsampling: ClassVar[str] = "bicubic"
    #: Approximate, effective halo in 2.5 m px (16 px at 10 m); see the module docstring.
    receptive_halo_2p5m: int = 64
    halo_is_exact: ClassVar[bool] = False
    #: Output channels (logits) of the 1x1 output convolution: 1, the cultivated logit.
    n_outputs: ClassVar[int] = 1

    def __init__(
        self,
        n_frames: int = 20,
        n_bands: int = 12,
        base_width: int = 16,
        scale: int = 4,
        pooled_features: int = 0,
    ) -> None:
        super().__init__()
        if min(n_frames, n_bands, base_width, scale) < 1 or pooled_features < 0:
            raise ValueError(
                f"need positive n_frames, n_bands, base_width, scale and pooled_features >= 0, got "
                f"{n_frames}, {n_bands}, {base_width}, {scale}, {pooled_features}"
            )
        halvings = scale.bit_length() - 1
        if self.upsampling == "transposed" and scale != 2**halvings:
            raise ValueError(f"{self.name} needs a power-of-two scale, got {scale}")
        self.n_frames, self.n_bands, self.base_width = int(n_frames), int(n_bands), int(base_width)
        self.scale, self.pooled_features = int(scale), int(pooled_features)
        self.in_channels = self.pooled_features or self.n_frames * self.n_bands
        self.config: dict[str, Any] = {
            "n_frames": self.n_frames,
            "n_bands": self.n_bands,
            "base_width": self.base_width,
            "scale": self.scale,
            "pooled_features": self.pooled_features,
        }
        w = self.base_width
        factor = 2 if self.upsampling == "bicubic" else 1
        self.inc = DoubleConv(self.in_channels, w)
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.MaxPool2d(2), DoubleConv(w * 2**i, w * 2 ** (i + 1) // (factor if i == 3 else 1))
            )
            for i in range(DEPTH)
        )
        self.ups = nn.ModuleList(
            Up(w * 2 ** (i + 1), w * 2**i // (factor if i else 1), self.upsampling)
            for i in reversed(range(DEPTH))
        )
        self.head = self._head(w, halvings)
        self.out = nn.Conv2d(w, self.n_outputs, 1)

    def _head(self, width: int, halvings: int) -> nn.Sequential:
        """Bicubic x scale + (3x3 conv, batch norm, ReLU) at the output resolution."""
        layers: list[nn.Module] = []
        if self.scale > 1:
            layers.append(nn.Upsample(scale_factor=self.scale, mode="bicubic", align_corners=False))
        layers += [
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        return nn.Sequential(*layers)

    def stack(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, in_channels, H, W): stacked frames, pooled if configured."""
        x = stack_frames(x)
        if self.pooled_features:
            return adaptive_max_pool_channels(x, self.pooled_features)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} takes T * C = {self.n_frames} x {self.n_bands} = {self.in_channels} stacked "
                f"channels, got {x.shape[1]}: feed n_frames frames, or build it with pooled_features"
            )
        return x

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) float 10 m series -> (B, n_outputs, scale H, scale W) logits at 2.5 m."""
        x = self.stack(x)
        H, W = x.shape[-2:]
        multiple = 2**DEPTH
        pad_h, pad_w = -H % multiple, -W % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        h = skips.pop()
        for up in self.ups:
            h = up(h, skips.pop())
        logits = self.out(self.head(h))
        return logits[..., : self.scale * H, : self.scale * W]

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters() if p.requires_grad)


@register_model("unet-b")
class UNetB(UNet):
    """U-Net-B: bicubic up-sampling in the expansive path and the x``scale`` head."""

    name: ClassVar[str] = "unet-b"
    upsampling: ClassVar[str] = "bicubic"


@register_model("unet-tc")
class UNetTC(UNet):
    """U-Net-TC: transposed convolutions in the expansive path and the x``scale`` head."""

    name: ClassVar[str] = "unet-tc"
    upsampling: ClassVar[str] = "transposed"

    def _head(self, width: int, halvings: int) -> nn.Sequential:
        """log2(scale) x (2x2 stride-2 transposed conv, batch norm, ReLU)."""
        layers: list[nn.Module] = []
        for _ in range(halvings):
            layers += [
                nn.ConvTranspose2d(width, width, 2, stride=2),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        return nn.Sequential(*layers)

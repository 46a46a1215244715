"""FG-UNet of seed 003 (sec. 3.2): (B, T, C, H, W) 10 m series -> (B, 1, 4H, 4W) logits at 2.5 m.

Late temporal fusion (sec. 3.2.3): the T frames are split into G consecutive temporal groups of
T / G frames, stacked along the spectral axis (T / G * C channels), and every group goes through
the SAME network (the groups are folded into the batch: shared weights by construction):

* a 3-step U-Net (sec. 3.2.1, :class:`UNet3`): levels of width w, 2w, 4w (w = 32 in the seed,
  "32 filters on the first and last layers"), a double 3x3 conv per level, 2x2 max pooling down,
  nearest x2 up-sampling (Keras ``UpSampling2D``) concatenated with the skip, a double 3x3 conv;
* in parallel, the pixel-wise path of 1x1 convs with 200, 100, 50 filters, each + ReLU
  (sec. 3.2.2, :class:`s2agri.models.pixel_nets.PointwiseMLP`).

Their outputs (w + 50 channels per group) are concatenated over the two paths and the G groups
and fused by a linear 1x1 conv. The seed's classifier is that 1x1 conv to its 17 classes, at 10 m;
here it maps to w channels, followed by the U-Net-B super-resolution head of
:mod:`s2agri.models.unet` (bicubic x``scale``, 3x3 conv + batch norm + ReLU at 2.5 m) and a 1x1
conv to the logit. The seed's dropout between the two 3x3 convs (no parameters) is left out.

Parameter counts. The seed's Table 2 counts are reproduced exactly, which pins the architecture:
with its data (T = 33, C = 10, G = 11, 30 channels per group), biased convs and no batch norm
(``batch_norm=False``), :class:`UNet3` has 479,296 parameters (= 485,297 of "U-Net 3 steps" minus
its 11*32*17 + 17 classifier) and the 1x1 path 31,350 (= 525,997 of FG-UNet minus 485,297 minus
the 11*50*17 classifier weights it adds); FG-UNet = 479,296 + 31,350 + 902*17 + 17 = 525,997.
Here, with 1 logit and the x4 head, that configuration has 548,823 parameters. :data:`PAPER_CONFIG`
(w = 32, G = 10 groups of 2 frames = 24 channels, closest to the seed's 30, batch norm) has
543,943 at T = 20, C = 12; the CPU default (w = 16, G = 5 groups of 4 frames) 167,655.

Receptive field. The seed states 23 px, which fits 3 * 2**steps - 1, as does its 95 px for the
5-step original U-Net, whose contracting path alone spans 140 px: both are well below the networks'
receptive fields. The U-Net the seed's parameter counts pin down (2 poolings, 2 convs per level) has a
receptive field of :data:`RECEPTIVE_FIELD_10M` = 44 px at 10 m: back from an output pixel, 5 px
of level-0 features, 3 level-1 px of the up-sampled path, +-2 at level 1 (7 px), 4 bottom px,
+-2 at 1/4 (8 px = 16 level-1 px), +-2 at level 1 (20 px = 40 px), +-2 at level 0: 44; the skips
see less. The test measures it (a perturbed input pixel changes a 44 px wide span of the U-Net
output, for every pooling phase). Depending on the pixel's phase modulo 4 the span reaches up to
:data:`RECEPTIVE_REACH_10M` = 23 px on one side, so ``receptive_halo_2p5m`` = 4 * 23 + 1 = 93
(the +1: the 3x3 conv at 2.5 m). The poolings make the network equivariant only to shifts by
multiples of 4 px and tiles of ``models.inference`` start anywhere, so tiling is close to, not
exactly, whole-box inference: ``halo_is_exact`` is False. Sizes that are not multiples of 4 are
padded at the bottom and right by replicating the last row / column (as the U-Nets).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (torch convention)

from .gcnn import parse_widths
from .pixel_nets import PAPER_HIDDEN, PointwiseMLP, check_series, fold_groups
from .registry import register_model
from .unet import DoubleConv

#: Most temporal groups of the CPU default (``groups=None``): 5 groups of 4 frames of 20 frames.
DEFAULT_GROUPS = 5
#: Constructor arguments of the paper-size FG-UNet on 20 frames (w = 32, 10 groups of 2 frames).
PAPER_CONFIG: dict[str, Any] = {"base_width": 32, "hidden": PAPER_HIDDEN, "groups": 10}
#: Max pooling steps of the 3-level U-Net: H and W are padded to multiples of 2**DEPTH.
DEPTH = 2
#: Receptive field of :class:`UNet3` at 10 m (module docstring); the seed says 23.
RECEPTIVE_FIELD_10M = 44
#: Farthest input pixel (10 m px, on one side, worst pooling phase) that moves a U-Net output.
RECEPTIVE_REACH_10M = 23


def plain_double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv with bias, ReLU) x 2: the seed's Keras block, without batch norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet3(nn.Module):
    """3-level U-Net (2 poolings), widths w, 2w, 4w: (N, in, H, W) -> (N, w, H, W), H, W % 4 == 0.

    Double 3x3 conv per level (with batch norm: :class:`s2agri.models.unet.DoubleConv`), 2x2 max
    pooling, nearest x2 up-sampling concatenated with the skip, double 3x3 conv.
    """

    def __init__(self, in_channels: int, width: int, batch_norm: bool = True) -> None:
        super().__init__()
        block = DoubleConv if batch_norm else plain_double_conv
        widths = [width * 2**i for i in range(DEPTH + 1)]
        self.inc = block(in_channels, width)
        self.downs = nn.ModuleList(block(widths[i], widths[i + 1]) for i in range(DEPTH))
        self.ups = nn.ModuleList(block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(DEPTH)))

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        h = skips.pop()
        for up in self.ups:
            h = up(torch.cat([skips.pop(), F.interpolate(h, scale_factor=2, mode="nearest")], dim=1))
        return h


@register_model("fg-unet")
class FGUNet(nn.Module):
    """FG-UNet with late temporal fusion and a x``scale`` head; see the module docstring.

    Args:
        n_frames: frames T of the input (fixed), split into ``groups`` groups of T / G frames.
        n_bands: bands C per frame.
        groups: G temporal groups sharing the network (seed: 11 groups of 3 frames); G | T. None:
            the largest divisor of T up to :data:`DEFAULT_GROUPS` (5 groups of 4 of 20 frames, 3 groups
            of 2 of the 6 monthly medians).
        base_width: w, the width of the U-Net's first and last level (seed: 32).
        hidden: widths of the pixel-wise 1x1 path, comma-separated (seed: ``"200,100,50"``).
        batch_norm: batch norm after every 3x3 conv (the seed has none: ``False`` reproduces its
            parameter counts; the U-Nets of :mod:`s2agri.models.unet` have it).
        scale: output pixels per input pixel along each axis (4: 10 m -> 2.5 m).
    """

    name: ClassVar[str] = "fg-unet"
    #: Halo in 2.5 m px: the U-Net's 23 px reach at 10 m and the 3x3 conv at 2.5 m (module docstring).
    receptive_halo_2p5m: int = 4 * RECEPTIVE_REACH_10M + 1
    halo_is_exact: ClassVar[bool] = False

    def __init__(
        self,
        n_frames: int = 20,
        n_bands: int = 12,
        groups: int | None = None,
        base_width: int = 16,
        hidden: str = PAPER_HIDDEN,
        batch_norm: bool = True,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if groups is None:
            groups = max(g for g in range(1, DEFAULT_GROUPS + 1) if n_frames % g == 0)  # 1 always divides
        if min(n_frames, n_bands, groups, base_width, scale) < 1:
            raise ValueError(
                f"need positive n_frames, n_bands, groups, base_width and scale, got "
                f"{n_frames}, {n_bands}, {groups}, {base_width}, {scale}"
            )
        if n_frames % groups:
            raise ValueError(
                f"n_frames = {n_frames} must be divisible by groups = {groups}: every temporal "
                f"group holds n_frames / groups frames (set train.params.groups to a divisor of {n_frames})"
            )
        self.n_frames, self.n_bands, self.groups = int(n_frames), int(n_bands), int(groups)
        self.base_width, self.hidden = int(base_width), parse_widths(hidden)
        self.batch_norm, self.scale = bool(batch_norm), int(scale)
        self.config: dict[str, Any] = {
            "n_frames": self.n_frames,
            "n_bands": self.n_bands,
            "groups": self.groups,
            "base_width": self.base_width,
            "hidden": ",".join(map(str, self.hidden)),
            "batch_norm": self.batch_norm,
            "scale": self.scale,
        }
        w, group_channels = self.base_width, self.n_frames // self.groups * self.n_bands
        self.unet = UNet3(group_channels, w, self.batch_norm)
        self.pixel_path = PointwiseMLP(group_channels, self.hidden)
        #: Features per group and path: U-Net w, then the 1x1 path's last width.
        self.group_width = w + self.hidden[-1]
        self.fuse = nn.Conv2d(self.groups * self.group_width, w, 1)
        head: list[nn.Module] = []
        if self.scale > 1:
            head.append(nn.Upsample(scale_factor=self.scale, mode="bicubic", align_corners=False))
        head.append(nn.Conv2d(w, w, 3, padding=1, bias=not self.batch_norm))
        if self.batch_norm:
            head.append(nn.BatchNorm2d(w))
        head.append(nn.ReLU(inplace=True))
        self.head = nn.Sequential(*head)
        self.out = nn.Conv2d(w, 1, 1)

    def check_input(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` is (B, n_frames, n_bands, H, W)."""
        check_series(x, self.n_frames, self.n_bands, self.name)

    def unet_features(self, groups: Tensor) -> Tensor:
        """U-Net path of (N, T/G C, H, W) grouped input -> (N, w, H, W), any H, W (replicate pad)."""
        H, W = groups.shape[-2:]
        multiple = 2**DEPTH
        pad_h, pad_w = -H % multiple, -W % multiple
        if pad_h or pad_w:
            groups = F.pad(groups, (0, pad_w, 0, pad_h), mode="replicate")
        return self.unet(groups)[..., :H, :W]

    def group_features(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, G, w + hidden[-1], H, W): U-Net and 1x1 features of each group."""
        self.check_input(x)
        g = fold_groups(x, self.groups)
        features = torch.cat([self.unet_features(g), self.pixel_path(g)], dim=1)
        return features.view(x.shape[0], self.groups, self.group_width, *x.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) float 10 m series -> (B, 1, scale H, scale W) logits at 2.5 m."""
        fused = self.fuse(self.group_features(x).flatten(1, 2))  # groups concatenated, group-major
        return self.out(self.head(fused))

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters() if p.requires_grad)

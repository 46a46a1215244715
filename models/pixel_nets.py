"""Per-pixel temporal models: the MLP (seed 003) and the pixel LSTM (seeds 000, 003).

Both classify every 10 m pixel from its own time series alone, (B, T, C, H, W) -> (B, 1, H, W)
logits at 10 m (:meth:`PixelModel.logits_10m`), then bicubic x``scale`` (``align_corners=False``)
of those logits gives (B, 1, 4H, 4W) at 2.5 m. Bicubic rather than nearest: nearest only paints
10 m blocks, while the 0-level set of the bicubic surface puts the class boundary between pixel
centres at a sub-pixel position, as the U-Nets' and the GCNN's bicubic x4 do; on logits (not
probabilities) its overshoot is harmless. The receptive field is one 10 m pixel, so tiled inference
is exact with the upsampler's 2 px of 10 m context alone: ``receptive_halo_2p5m = 0``,
``halo_is_exact = True``.

* ``mlp`` (:class:`PixelMLP`, seed 003 sec. 3.2.2 and 4.2 "MLP 3 layers"): the frames stacked
  along the spectral axis (T * C channels, "early fusion") through 1x1 convs of 200, 100, 50
  filters, each + ReLU, and a 1x1 conv to the logit. ``groups=G`` instead splits the T frames into
  G consecutive temporal groups that share the 1x1 path and concatenates their G * 50 outputs
  before the 1x1 classifier (late fusion, as FG-UNet). The seed's published 40,717 parameters
  (Table 2) are exactly this grouped form with its data (T = 33, C = 10, G = 11) and 17 classes:
  (30*200+200) + (200*100+100) + (100*50+50) + (550*17+17); early fusion on 330 channels would
  need 66,200 for the first layer alone. Here (1 logit): default = :data:`MLP_PAPER_CONFIG`
  (T = 20, C = 12, 240 channels) 73,401; the seed's grouped configuration 31,901, which plus the
  16 more output units of its 17-class classifier (16 * 551 = 8,816) is its 40,717.
* ``lstm`` (:class:`PixelLSTM`, seed 000 sec. III): a stacked LSTM over the T frames of a pixel
  (C bands per step), its last hidden state of the top layer through a linear layer to the logit.
  Pixels are folded into the batch, (B H W, T, C): one ``nn.LSTM`` call, no loop over pixels.
  Seed 000 gives no layout, only 331,393 parameters, reproduced exactly by the one natural
  layout with that count, :data:`LSTM_PAPER_CONFIG`: 3 layers of
  128 units over the k = 80 adaptive max pooled features of the T * C stack, fed as a sequence of
  80 scalars (the seed feeds every deep model the same k = 80 pooled features): layer 1
  4*128*(1+128) + 8*128 = 67,072, layers 2 and 3 4*128*256 + 8*128 = 132,096 each, output
  128 + 1 (torch LSTMs have two bias vectors). Over the frames with that width (input 12) it
  would be 337,025. The CPU default (2 layers of 64 units over the T frames) has 53,313.
  Seed 003's "LSTM 3 layers" (324,024) is not reproduced: no LSTM arrangement of its 1x1 path
  and 17 classes we tried gives that count.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .gcnn import adaptive_max_pool_channels, parse_widths, stack_frames, upsample_bicubic
from .registry import register_model

#: The seed 003 1x1 path widths, also the CPU default (the model is small).
PAPER_HIDDEN = "200,100,50"
#: Constructor arguments of the paper-size MLP (early fusion of the stacked frames, seed 003).
MLP_PAPER_CONFIG: dict[str, Any] = {"hidden": PAPER_HIDDEN, "groups": 1}
#: Constructor arguments of seed 000's LSTM (331,393 parameters).
LSTM_PAPER_CONFIG: dict[str, Any] = {"hidden_size": 128, "num_layers": 3, "pooled_features": 80}
#: The paper-size configuration of each model of this module, by registry name.
PAPER_CONFIG: dict[str, dict[str, Any]] = {"mlp": MLP_PAPER_CONFIG, "lstm": LSTM_PAPER_CONFIG}


def check_series(x: Tensor, n_frames: int, n_bands: int, name: str) -> None:
    """``ValueError`` unless ``x`` is a (B, n_frames, n_bands, H, W) series (for model ``name``)."""
    stack_frames(x)  # 5-D check
    if x.shape[1:3] != (n_frames, n_bands):
        raise ValueError(
            f"{name} takes (B, T, C, H, W) with T = n_frames = {n_frames} and "
            f"C = n_bands = {n_bands}, got {tuple(x.shape)}"
        )


def fold_groups(x: Tensor, groups: int) -> Tensor:
    """(B, T, C, H, W) -> (B G, T/G C, H, W): G consecutive temporal groups folded into the batch.

    Group g of item b is row ``b G + g``; its T/G frames are stacked along the channel axis.
    """
    B, T, C, H, W = x.shape
    if T % groups:
        raise ValueError(f"{T} frames cannot be split into {groups} temporal groups of equal size")
    return x.reshape(B * groups, (T // groups) * C, H, W)


def unfold_groups(h: Tensor, groups: int) -> Tensor:
    """(B G, D, H, W) -> (B, G D, H, W): the features of the G groups concatenated, group-major."""
    BG, D, H, W = h.shape
    return h.reshape(BG // groups, groups * D, H, W)


class PointwiseMLP(nn.Sequential):
    """Cascade of 1x1 convs (with bias), each + ReLU: seed 003's pixel-wise path (200, 100, 50)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 1), nn.ReLU(inplace=True)]
            in_channels = width
        super().__init__(*layers)


class PixelModel(nn.Module):
    """Base of the per-pixel models: 10 m logits (:meth:`logits_10m`), bicubic x``scale``."""

    name: ClassVar[str] = "pixel"
    #: The 10 m logit of a pixel depends on that pixel only; bicubic needs 2 px of 10 m context,
    #: which ``models.inference`` adds: a zero 2.5 m halo makes tiles exact.
    receptive_halo_2p5m: int = 0
    halo_is_exact: ClassVar[bool] = True
    #: Pixel by pixel, then a symmetric upsampler: transposing or flipping the input does the same to
    #: the output, so test-time augmentation would only repeat the prediction (``models.inference``).
    dihedral_equivariant: ClassVar[bool] = True

    def __init__(self, n_frames: int, n_bands: int, scale: int) -> None:
        super().__init__()
        if min(n_frames, n_bands, scale) < 1:
            raise ValueError(f"need positive n_frames, n_bands and scale, got {n_frames}, {n_bands}, {scale}")
        self.n_frames, self.n_bands, self.scale = int(n_frames), int(n_bands), int(scale)

    def check_input(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` is (B, n_frames, n_bands, H, W)."""
        check_series(x, self.n_frames, self.n_bands, self.name)

    def logits_10m(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, 1, H, W) logits at 10 m, pixel by pixel."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) float 10 m series -> (B, 1, scale H, scale W) logits at 2.5 m."""
        return upsample_bicubic(self.logits_10m(x), self.scale)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters() if p.requires_grad)


@register_model("mlp")
class PixelMLP(PixelModel):
    """1x1 convs (200, 100, 50) + ReLU on the stacked frames, 1x1 classifier (seed 003).

    Args:
        n_frames: frames T of the input (fixed: they are channels).
        n_bands: bands C per frame.
        hidden: widths of the 1x1 path, comma-separated (seed 003: ``"200,100,50"``).
        groups: G temporal groups sharing the 1x1 path, concatenated before the classifier
            (1: early fusion of all T * C channels); G must divide T.
        scale: output pixels per input pixel along each axis (4: 10 m -> 2.5 m).
    """

    name: ClassVar[str] = "mlp"

    def __init__(
        self,
        n_frames: int = 20,
        n_bands: int = 12,
        hidden: str = PAPER_HIDDEN,
        groups: int = 1,
        scale: int = 4,
    ) -> None:
        super().__init__(n_frames, n_bands, scale)
        if groups < 1 or self.n_frames % groups:
            raise ValueError(f"n_frames = {n_frames} must be divisible by groups = {groups} >= 1")
        self.groups, self.hidden = int(groups), parse_widths(hidden)
        self.config: dict[str, Any] = {
            "n_frames": self.n_frames,
            "n_bands": self.n_bands,
            "hidden": ",".join(map(str, self.hidden)),
            "groups": self.groups,
            "scale": self.scale,
        }
        self.path = PointwiseMLP(self.n_frames // self.groups * self.n_bands, self.hidden)
        self.classifier = nn.Conv2d(self.groups * self.hidden[-1], 1, 1)

    def logits_10m(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.classifier(unfold_groups(self.path(fold_groups(x, self.groups)), self.groups))


@register_model("lstm")
class PixelLSTM(PixelModel):
    """Stacked LSTM over each pixel's series, last hidden state -> linear -> logit (seed 000).

    Args:
        n_frames: frames T of the input when ``pooled_features`` is 0 (one LSTM step per frame).
        n_bands: bands C per frame (the LSTM input size when ``pooled_features`` is 0).
        hidden_size: units of every LSTM layer (seed 000: 128).
        num_layers: stacked LSTM layers (seed 000: 3).
        pooled_features: k > 0 max pools the T * C stack to k channels and runs the LSTM over
            them as k steps of one scalar, any T (seed 000: 80); 0 runs it over the T frames.
        scale: output pixels per input pixel along each axis (4: 10 m -> 2.5 m).

    Without gradients, at most :attr:`inference_chunk` pixel sequences run at once (memory).
    """

    name: ClassVar[str] = "lstm"
    #: Pixel sequences per LSTM call in no-grad inference; 0: all at once. Changes no result.
    inference_chunk: int = 65536

    def __init__(
        self,
        n_frames: int = 20,
        n_bands: int = 12,
        hidden_size: int = 64,
        num_layers: int = 2,
        pooled_features: int = 0,
        scale: int = 4,
    ) -> None:
        super().__init__(n_frames, n_bands, scale)
        if min(hidden_size, num_layers) < 1 or pooled_features < 0:
            raise ValueError(
                f"need positive hidden_size and num_layers and pooled_features >= 0, got "
                f"{hidden_size}, {num_layers}, {pooled_features}"
            )
        self.hidden_size, self.num_layers = int(hidden_size), int(num_layers)
        self.pooled_features = int(pooled_features)
        self.config: dict[str, Any] = {
            "n_frames": self.n_frames,
            "n_bands": self.n_bands,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "pooled_features": self.pooled_features,
            "scale": self.scale,
        }
        input_size = 1 if self.pooled_features else self.n_bands
        self.lstm = nn.LSTM(input_size, self.hidden_size, self.num_layers, batch_first=True)
        self.head = nn.Linear(self.hidden_size, 1)

    def sequences(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B H W, steps, features): one sequence per pixel, row-major."""
        if self.pooled_features:
            pooled = adaptive_max_pool_channels(stack_frames(x), self.pooled_features)
            return pooled.permute(0, 2, 3, 1).reshape(-1, self.pooled_features, 1)
        self.check_input(x)
        B, T, C, H, W = x.shape
        return x.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)

    def _classify(self, seq: Tensor) -> Tensor:
        _, (h_n, _) = self.lstm(seq)
        return self.head(h_n[-1])

    def logits_10m(self, x: Tensor) -> Tensor:
        seq = self.sequences(x)
        chunk = int(self.inference_chunk)
        if torch.is_grad_enabled() or chunk <= 0 or len(seq) <= chunk:
            out = self._classify(seq)
        else:
            out = torch.cat([self._classify(part) for part in seq.split(chunk)])
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        return out.view(B, H, W, 1).permute(0, 3, 1, 2)

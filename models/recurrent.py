"""ConvLSTM and ConvSTAR segmenters of seed 004 over monthly medians: (B, M, C, H, W) -> (B, 1, 4H, 4W).

Seed 004 (Sen4AgriNet, section "Sen4AgriNet—PAD Experiment") segments series of monthly medians
(:mod:`s2agri.tasks.monthly`) with ConvLSTM [59] and ConvSTAR [32] and classifies each pixel from
the last hidden state ("N-to-1"). Here the input is the project's (B, T, C, H, W) convention with
T = M months at 10 m; ``n_layers`` recurrent cells are stacked (the first reads the C bands, the
next ones the hidden states of the one below), all with ``hidden`` channels and
``kernel_size`` x ``kernel_size`` convolutions with zero padding, zero initial states:

* ``convlstm`` (:class:`ConvLSTMCell`, Shi et al. 2015, without peephole connections, as the
  seed's code): ``[i, f, g, o] = W_x * x_t + W_h * h_{t-1} + b``;
  ``c_t = σ(f) c_{t-1} + σ(i) tanh(g)``; ``h_t = σ(o) tanh(c_t)``. The seed's code normalises the
  gates with GroupNorm; here, without it, each gate's weights over ``[x, h]`` start orthogonal
  (as ConvSTAR's) and the forget-gate bias at 1 (Jozefowicz et al. 2015): with PyTorch's default
  initialisation the small ConvLSTM barely trains in the overfit test.
* ``convstar`` (:class:`ConvSTARCell`, Turkoglu et al.'s STAR unit in the convolutional form of
  the seed's code, ms-convSTAR): one gate ``k_t = σ(W_kx * x_t + W_kh * h_{t-1} + b_k)`` and
  ``z_t = tanh(W_z * x_t + b_z)``, ``h_t = k_t h_{t-1} + (1 - k_t) z_t``; orthogonal weights,
  gate bias 1 and update bias 0 at initialisation, as there.

Each cell's input convolution runs on all M steps at once; only ``W_h * h_{t-1}`` is sequential.
``W_x`` and ``W_h`` are the two halves of the reference's single convolution over
``[x_t, h_{t-1}]`` (same function and parameter count).

Head (:class:`PixelShuffleHead`): the last hidden state of the last layer goes through a 3x3 conv
to ``head_width * scale²`` channels and a pixel shuffle (sub-pixel convolution, ICNR
initialisation: nearest-neighbour up-sampling at the start), LeakyReLU(0.2), a 3x3 conv + LeakyReLU
at 2.5 m and a 1x1 conv to the logits. Seed 004's models end in a 1x1 conv at the input
resolution; the ×4 head is this project's. Seed 004's ConvLSTM is a 3-level encoder–decoder of
5x5 ConvLSTM cells (~9 M parameters) that is not reproduced: both models here are the stacked
form of its ConvSTAR (3 layers of 64 channels, 3x3, ~260 k parameters with 4 bands and 11
classes), :data:`PAPER_CONFIG`.

Parameters (measured, 12 bands, ``head_width=8``): per cell ConvLSTM ``4h (C k² + h k² + 1)``,
ConvSTAR ``2h (C k² + 1) + h² k²`` (C: the cell's input channels), head ``h·w s² k² + w s² +
w² k² + 2w + 1``. CPU default (``hidden=32``, 2 layers, k = 3): ``convlstm`` 162,257,
``convstar`` 81,489; :data:`PAPER_CONFIG`: ``convlstm`` 840,145, ``convstar`` 346,705.

Tiling is exact: there is no normalisation or global operation. The last hidden state sees
``(M + L - 1) * (k // 2)`` px at 10 m (each step and each layer add ``k // 2``), the head's 3x3
conv one more 10 m px, its 2.5 m 3x3 conv one 2.5 m px, so ``receptive_halo_2p5m`` is
``4 ((M + L - 1) (k // 2) + 1) + 1`` for ``M = n_months`` (33 for 6 months, 2 layers, k = 3) and
``input_halo_10m`` is ``(M + L - 1) (k // 2) + 2`` (9). Inputs with more months need more.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from .registry import register_model

#: Seed 004's ConvSTAR: 3 stacked cells of 64 channels with 3x3 convolutions.
PAPER_CONFIG: dict[str, Any] = {"hidden": 64, "n_layers": 3, "kernel_size": 3}
#: April to September, the window of seed 004 (and 6 months of the challenge's March-August season).
N_MONTHS = 6
LEAKY_SLOPE = 0.2


class _ConvCell(nn.Module):
    """A convolutional recurrent cell: ``input_conv`` (with bias) on x_t, ``hidden_conv`` on h_{t-1}.

    The state is a tuple whose first item is the hidden state h.
    """

    #: Channels of the input and hidden convolutions, in multiples of ``hidden``.
    input_gates: ClassVar[int] = 1
    hidden_gates: ClassVar[int] = 1
    #: Number of state tensors (h, or h and c).
    n_states: ClassVar[int] = 1

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.in_channels, self.hidden = int(in_channels), int(hidden)
        padding = kernel_size // 2
        self.input_conv = nn.Conv2d(in_channels, self.input_gates * hidden, kernel_size, padding=padding)
        self.hidden_conv = nn.Conv2d(
            hidden, self.hidden_gates * hidden, kernel_size, padding=padding, bias=False
        )

    @torch.no_grad()
    def _orthogonal_gate(self, block: int, bias: float) -> None:
        """Orthogonal rows over [x, h] for the gate ``block`` (channels ``block h .. (block + 1) h``)."""
        h, C, k = self.hidden, self.in_channels, self.input_conv.kernel_size[0]
        rows = slice(block * h, (block + 1) * h)
        weight = nn.init.orthogonal_(torch.empty(h, C + h, k, k))
        self.input_conv.weight[rows] = weight[:, :C]
        self.hidden_conv.weight[rows] = weight[:, C:]
        cast(Tensor, self.input_conv.bias)[rows] = bias

    def step(self, x_part: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """One time step from the input convolution ``x_part`` of x_t and the previous state."""
        raise NotImplementedError

    def forward(self, x: Tensor, sequence: bool = True) -> Tensor:
        """(B, M, C_in, H, W) -> hidden states (B, M, hidden, H, W), or the last (B, hidden, H, W)."""
        B, M, C, H, W = x.shape
        x_parts = self.input_conv(x.reshape(B * M, C, H, W)).view(B, M, -1, H, W)
        state = tuple(x.new_zeros(B, self.hidden, H, W) for _ in range(self.n_states))
        outputs = []
        for t in range(M):
            state = self.step(x_parts[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1) if sequence else state[0]


class ConvLSTMCell(_ConvCell):
    """ConvLSTM cell without peepholes: gates i, f, g, o (in this order along the channels)."""

    input_gates: ClassVar[int] = 4
    hidden_gates: ClassVar[int] = 4
    n_states: ClassVar[int] = 2

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, hidden, kernel_size)
        for gate in range(4):  # orthogonal per gate as the ConvSTAR reference; forget-gate bias 1
            self._orthogonal_gate(gate, 1.0 if gate == 1 else 0.0)

    def step(self, x_part: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        h, c = state
        i, f, g, o = (x_part + self.hidden_conv(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvSTARCell(_ConvCell):
    """ConvSTAR cell: ``input_conv`` gives the gate's input part (first ``hidden``) and the update z."""

    input_gates: ClassVar[int] = 2
    hidden_gates: ClassVar[int] = 1

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, hidden, kernel_size)
        self._orthogonal_gate(0, 1.0)  # the reference: orthogonal gate over [x, h], bias 1
        with torch.no_grad():  # orthogonal update, bias 0
            nn.init.orthogonal_(self.input_conv.weight[hidden:])
            cast(Tensor, self.input_conv.bias)[hidden:] = 0.0

    def step(self, x_part: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (h,) = state
        gate_x, update = x_part.chunk(2, dim=1)
        k = torch.sigmoid(gate_x + self.hidden_conv(h))
        return (k * h + (1 - k) * torch.tanh(update),)


def icnr_(weight: Tensor, scale: int) -> Tensor:
    """ICNR initialisation (Aitken et al. 2017) of a conv feeding ``PixelShuffle(scale)``, in place.

    Output channel ``c`` of the shuffle reads channels ``c s² .. c s² + s² - 1``: giving them one
    Kaiming-initialised kernel makes the shuffle a nearest-neighbour up-sampling at the start.
    """
    out_channels = weight.shape[0] // scale**2
    with torch.no_grad():
        kernel = nn.init.kaiming_normal_(weight.new_empty(out_channels, *weight.shape[1:]))
        weight.copy_(kernel.repeat_interleave(scale**2, dim=0))
    return weight


class PixelShuffleHead(nn.Sequential):
    """10 m features -> 2.5 m logits: 3x3 conv + pixel shuffle ×scale, 3x3 conv, 1x1 conv (LeakyReLUs)."""

    def __init__(self, in_channels: int, width: int, scale: int) -> None:
        sub_pixel = nn.Conv2d(in_channels, width * scale**2, 3, padding=1)
        icnr_(sub_pixel.weight, scale)
        nn.init.zeros_(cast(Tensor, sub_pixel.bias))
        super().__init__(
            sub_pixel,
            nn.PixelShuffle(scale),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(width, 1, 1),
        )


class RecurrentSegmenter(nn.Module):
    """Stacked convolutional recurrent cells over M months + ×``scale`` head; see the module docstring.

    Args:
        n_bands: bands C per month (12 Sentinel-2 bands).
        hidden: channels of every cell's hidden state (paper: 64).
        n_layers: stacked cells (paper: 3).
        kernel_size: odd size of the cells' convolutions (paper: 3).
        head_width: channels of the head at 2.5 m.
        scale: super-resolution factor of the pixel-shuffle head (4: 10 m -> 2.5 m).
        n_months: the months M the halos are computed for (``forward`` takes any M).
    """

    name: ClassVar[str] = "recurrent"
    cell: ClassVar[type[_ConvCell]] = _ConvCell
    #: No normalisation or global operation: the halos below make tiled inference exact.
    halo_is_exact: ClassVar[bool] = True

    def __init__(
        self,
        n_bands: int = 12,
        hidden: int = 32,
        n_layers: int = 2,
        kernel_size: int = 3,
        head_width: int = 8,
        scale: int = 4,
        n_months: int = N_MONTHS,
    ) -> None:
        super().__init__()
        if min(n_bands, hidden, n_layers, kernel_size, head_width, scale, n_months) < 1:
            raise ValueError(
                "need positive n_bands, hidden, n_layers, kernel_size, head_width, scale and n_months, "
                f"got {n_bands}, {hidden}, {n_layers}, {kernel_size}, {head_width}, {scale}, {n_months}"
            )
        self.n_bands, self.hidden, self.n_layers = int(n_bands), int(hidden), int(n_layers)
        self.kernel_size, self.scale, self.n_months = int(kernel_size), int(scale), int(n_months)
        self.config: dict[str, Any] = {
            "n_bands": self.n_bands,
            "hidden": self.hidden,
            "n_layers": self.n_layers,
            "kernel_size": self.kernel_size,
            "head_width": int(head_width),
            "scale": self.scale,
            "n_months": self.n_months,
        }
        self.cells = nn.ModuleList(
            self.cell(self.n_bands if i == 0 else self.hidden, self.hidden, self.kernel_size)
            for i in range(self.n_layers)
        )
        self.head = PixelShuffleHead(self.hidden, int(head_width), self.scale)

    def encode(self, x: Tensor) -> Tensor:
        """(B, M, C, H, W) monthly series -> (B, hidden, H, W): the last layer's last hidden state."""
        if x.ndim != 5 or x.shape[1] == 0:
            raise ValueError(f"x must have shape (B, M, C, H, W) with M > 0, got {tuple(x.shape)}")
        if x.shape[2] != self.n_bands:
            raise ValueError(f"{self.name} takes {self.n_bands} bands per month, got {x.shape[2]}")
        for cell in self.cells[:-1]:
            x = cell(x)
        return self.cells[-1](x, sequence=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, M, C, H, W) float monthly medians at 10 m -> (B, 1, scale H, scale W) logits at 2.5 m."""
        return self.head(self.encode(x))

    @property
    def input_halo_10m(self) -> int:
        """10 m px of context that make a crop exact for inputs of at most ``n_months`` months."""
        return (self.n_months + self.n_layers - 1) * (self.kernel_size // 2) + 2

    @property
    def receptive_halo_2p5m(self) -> int:
        """Exact halo in 2.5 m px: ``4 (input_halo_10m - 1) + 1``; see the module docstring."""
        return self.scale * (self.input_halo_10m - 1) + 1

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(int(p.numel()) for p in self.parameters() if p.requires_grad)


@register_model("convlstm")
class ConvLSTM(RecurrentSegmenter):
    """Stacked ConvLSTM cells over monthly medians with a ×``scale`` pixel-shuffle head."""

    name: ClassVar[str] = "convlstm"
    cell: ClassVar[type[_ConvCell]] = ConvLSTMCell


@register_model("convstar")
class ConvSTAR(RecurrentSegmenter):
    """Stacked ConvSTAR cells over monthly medians with a ×``scale`` pixel-shuffle head."""

    name: ClassVar[str] = "convstar"
    cell: ClassVar[type[_ConvCell]] = ConvSTARCell

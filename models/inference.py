"""Tiled 2.5 m inference of a torch segmenter over a whole box, exact with a large enough halo.

:func:`predict_tiled` cuts the 10 m box into tiles of ``tile`` x ``tile`` pixels, runs the model
on each tile plus a halo of context, keeps the tile's interior of the 2.5 m output and stitches
the interiors. Windows never extend beyond the box: a window near a border is shifted inwards
(all windows keep one shape, so they batch), and the model sees the box's true border exactly as
in whole-box inference.

Why the halo makes tiling exact. Let the model's 2.5 m output at pixel ``i`` depend only on its
2.5 m features within ``r = receptive_halo_2p5m`` pixels (e.g. a GCNN of ``L`` 3x3 graph layers:
``r = L + 1``: a node on a cut has a wrong degree, and ``Â_ij = (d_i d_j)^-1/2`` carries that one hop
further than the ``L`` layers alone; :class:`s2agri.models.gcnn.GCNN` reports 5), and those on the 10 m input through the x4 upsampler. Bicubic x4 with
``align_corners=False`` reads source pixels ``j - 2 .. j + 2`` around the parent ``j = i // 4``
of a 2.5 m pixel (4 taps at ``(i + 0.5) / 4 - 0.5``), i.e. 2 px of 10 m context; bilinear needs
1, a pixel-shuffle or a stride-4 transposed convolution with kernel 4 needs 0. The 2.5 m halo
``r`` spans at most ``ceil(r / 4)`` parent pixels, so

    halo_10m = ceil(r / 4) + upsample_context

10 m pixels on each side of a tile make every interior output pixel see exactly the inputs it
sees in the whole box (it exceeds the exact minimum by at most one pixel). Requirements: the
model's output is translation equivariant on the 10 m grid (no global pooling or attention,
batch norm in eval mode; U-Nets with ``k`` poolings are equivariant only to shifts by multiples
of ``2**k`` and have receptive fields of tens of pixels: give them a halo that covers it or accept
approximate stitching). ``halo`` larger than needed costs time, never exactness. A model whose
``receptive_halo_2p5m`` is None gets :data:`DEFAULT_HALO_10M` and a warning.

Memory: one batch of windows is materialised at a time. Peak ≈ the box input (the caller's,
``T*C*H*W*4`` B: 480 MB for a 500 x 500 box with T = 40, C = 12, float32) + the output
``16*H*W*4`` B (16 MB) + one input batch ``B*T*C*(tile+2*halo_10m)**2*4`` B (tile 128, halo 4:
35.5 MB per window) + the model's activations for that batch, which dominate: about
``B*16*(tile+2*halo_10m)**2*4`` B per live channel at 2.5 m. Measured for that 500 x 500, T = 40
box with a GCNN-shaped model (max pooling to 80 features, bicubic x4, 64/32/16/8/1 GCN layers,
halo 4 px at 10 m), on top of the box: +0.33 GB with ``tile=128, batch_size=1``, +1.17 GB with
the defaults ``tile=128, batch_size=4``, +1.05 GB with ``tile=250, batch_size=1`` (about 23 s on
one CPU thread in each case).

Test-time augmentation (``tta``): the box is also predicted transposed and/or flipped (the
dihedral symmetries of the square grid, :data:`TTA_TRANSFORMS`), each output is mapped back and
the probabilities are averaged. Fields have no preferred orientation, so the averaged map is the
model's prediction made symmetric; it costs one pass per transform (4 for ``flips``, 8 for
``dihedral``) and no memory beyond one output. A model that declares ``dihedral_equivariant``
(per-pixel models, the GCNN: their outputs transform with their inputs) gets one pass whatever the
mode, since every pass would give the same map.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from itertools import product
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from s2agri.models.names import TTAMode

LOGGER = logging.getLogger(__name__)

#: Output pixels per input pixel along each axis (``s2agri.tasks.contract.SCALE``).
SCALE = 4
#: 10 m pixels of context for the bicubic x4 upsampler (its 4-tap kernel reaches 2 source pixels).
BICUBIC_CONTEXT_10M = 2
#: 10 m halo used when neither ``halo`` nor ``model.receptive_halo_2p5m`` is known (FG-UNet's 16 px).
DEFAULT_HALO_10M = 16


class Dihedral(NamedTuple):
    """A symmetry of the grid: transpose the last two axes (first), then flip rows, then columns."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` (..., H, W) transformed: a view, no copy."""
        if self.transpose:
            x = np.swapaxes(x, -1, -2)
        if self.flip_rows:
            x = np.flip(x, -2)
        return np.flip(x, -1) if self.flip_cols else x

    def undo(self, y: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`apply` (flips first, then the transpose): a view, no copy."""
        if self.flip_cols:
            y = np.flip(y, -1)
        if self.flip_rows:
            y = np.flip(y, -2)
        return np.swapaxes(y, -1, -2) if self.transpose else y


#: The transforms averaged by each test-time augmentation mode (the identity first).
TTA_TRANSFORMS: dict[str, tuple[Dihedral, ...]] = {
    "none": (Dihedral(False, False, False),),
    "flips": tuple(Dihedral(False, r, c) for r in (False, True) for c in (False, True)),
    "dihedral": tuple(Dihedral(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)),
}


def tile_halo_10m(halo_2p5m: int, upsample_context: int = BICUBIC_CONTEXT_10M) -> int:
    """10 m halo making tiles exact: ``ceil(halo_2p5m / 4) + upsample_context`` (module docstring)."""
    if halo_2p5m < 0 or upsample_context < 0:
        raise ValueError(f"halo_2p5m and upsample_context must be >= 0, got {halo_2p5m}, {upsample_context}")
    return math.ceil(halo_2p5m / SCALE) + upsample_context


def axis_tiles(size: int, tile: int, halo: int) -> list[tuple[int, int, int]]:
    """``(start, stop, window_start)`` of the tiles along one axis of ``size`` 10 m pixels.

    Interiors ``[start, stop)`` partition the axis; every window is ``min(tile + 2 * halo, size)``
    long, starts at ``window_start`` and covers ``halo`` pixels on each side of its interior, or
    reaches the box border.
    """
    if size < 1 or tile < 1 or halo < 0:
        raise ValueError(f"need size >= 1, tile >= 1 and halo >= 0, got {size}, {tile}, {halo}")
    window = min(tile + 2 * halo, size)
    tiles = []
    for start in range(0, size, tile):
        stop = min(start + tile, size)
        window_start = min(max(start - halo, 0), size - window)
        tiles.append((start, stop, window_start))
    return tiles


def _as_box(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``x`` as a (T, C, H, W) array (a CPU copy of a tensor)."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (T, C, H, W), got {tuple(x.shape)}")
    if min(x.shape) < 1:
        raise ValueError(f"x has an empty axis: shape {tuple(x.shape)}")
    return x


def _batches(
    x: np.ndarray,
    tiles: list[tuple[tuple[int, int, int], tuple[int, int, int]]],
    window: tuple[int, int],
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, list[tuple[tuple[int, int, int], tuple[int, int, int]]]]]:
    """Float32 (B, T, C, h, w) batches of windows, with their tiles."""
    wh, ww = window
    for first in range(0, len(tiles), batch_size):
        group = tiles[first : first + batch_size]
        windows = [x[:, :, r[2] : r[2] + wh, c[2] : c[2] + ww] for r, c in group]
        yield torch.from_numpy(np.stack(windows).astype(np.float32, copy=False)), group


def predict_tiled(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    tile: int = 128,
    halo: int | None = None,
    upsample_context: int = BICUBIC_CONTEXT_10M,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    tta: TTAMode = "none",
) -> np.ndarray:
    """(4H, 4W) float32 probabilities (sigmoid of the logits) of one box ``x`` (T, C, H, W) at 10 m.

        ``tile``: interior size in 10 m pixels; ``halo``: the model's receptive halo in 2.5 m pixels
        (None: ``model.receptive_halo_2p5m``); ``upsample_context``: 10 m context of the model's x4
        upsampler (2 for bicubic, the safe default). The model is moved to ``device`` and run in eval
        mode under ``no_grad``; its train/eval mode is restored afterwards. ``progress``: a tqdm bar
        over batches (None: only on a TTY). ``tta``: the test-time augmentation (:data:`TTA_TRANSFORMS`,
    the module docstring). A model with several outputs (``n_outputs``) gives its first
        one, the cultivated (extent) probability: :func:`predict_tiled_outputs` gives them all.
    """
    return predict_tiled_outputs(
        model,
        x,
        tile=tile,
        halo=halo,
        upsample_context=upsample_context,
        batch_size=batch_size,
        device=device,
        progress=progress,
        tta=tta,
    )[0]


def predict_tiled_outputs(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    tile: int = 128,
    halo: int | None = None,
    upsample_context: int = BICUBIC_CONTEXT_10M,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    tta: TTAMode = "none",
) -> np.ndarray:
    """(K, 4H, 4W) float32 sigmoid of the K = ``model.n_outputs`` (default 1) logit channels of one
    box, averaged over the ``tta`` transforms; the arguments are those of :func:`predict_tiled`."""
    if tta not in TTA_TRANSFORMS:
        raise ValueError(f"tta={tta!r} is unknown: use one of {', '.join(TTA_TRANSFORMS)}")
    array = _as_box(x)
    transforms = TTA_TRANSFORMS["none" if getattr(model, "dihedral_equivariant", False) else tta]
    total: np.ndarray | None = None
    for transform in transforms:
        proba = transform.undo(
            _predict_once(
                model,
                transform.apply(array),
                tile=tile,
                halo=halo,
                upsample_context=upsample_context,
                batch_size=batch_size,
                device=device,
                progress=progress,
            )
        )
        if total is None:
            total = np.ascontiguousarray(proba)
        else:
            total += proba
    assert total is not None
    if len(transforms) > 1:
        total /= np.float32(len(transforms))
    return total


@torch.no_grad()
def _predict_once(
    model: nn.Module,
    x: np.ndarray,
    *,
    tile: int,
    halo: int | None,
    upsample_context: int,
    batch_size: int,
    device: str | torch.device,
    progress: bool | None,
) -> np.ndarray:
    """(K, 4H, 4W) probabilities of one box without augmentation (:func:`predict_tiled_outputs`)."""
    if tile < 1 or batch_size < 1:
        raise ValueError(f"tile and batch_size must be >= 1, got {tile} and {batch_size}")
    if halo is None:
        halo = getattr(model, "receptive_halo_2p5m", None)
    if halo is None:
        LOGGER.warning(
            "receptive halo of %s unknown: using %d px at 10 m, tiles may differ from whole-box inference",
            getattr(model, "name", type(model).__name__),
            DEFAULT_HALO_10M,
        )
        halo_10m = DEFAULT_HALO_10M
    else:
        halo_10m = tile_halo_10m(int(halo), upsample_context)
    _, _, H, W = x.shape
    rows = axis_tiles(H, tile, halo_10m)
    cols = axis_tiles(W, tile, halo_10m)
    window = (min(tile + 2 * halo_10m, H), min(tile + 2 * halo_10m, W))
    tiles = list(product(rows, cols))
    device = torch.device(device)
    channels = int(getattr(model, "n_outputs", 1))
    out = np.empty((channels, SCALE * H, SCALE * W), dtype=np.float32)

    was_training = model.training
    model.to(device)
    model.eval()
    try:
        n_batches = math.ceil(len(tiles) / batch_size)
        show = sys.stderr.isatty() if progress is None else progress
        for batch, group in tqdm(
            _batches(x, tiles, window, batch_size),
            total=n_batches,
            desc="tiles",
            unit="batch",
            leave=False,
            disable=not show,
        ):
            logits = model(batch.to(device, non_blocking=True))
            expected = (len(group), channels, SCALE * window[0], SCALE * window[1])
            if tuple(logits.shape) != expected:
                raise ValueError(
                    f"the model returned shape {tuple(logits.shape)} for {expected}: not 4x logits"
                )
            proba = torch.sigmoid(logits.float()).cpu().numpy()
            for k, ((r0, r1, rw), (c0, c1, cw)) in enumerate(group):
                out[:, SCALE * r0 : SCALE * r1, SCALE * c0 : SCALE * c1] = proba[
                    k, :, SCALE * (r0 - rw) : SCALE * (r1 - rw), SCALE * (c0 - cw) : SCALE * (c1 - cw)
                ]
    finally:
        model.train(was_training)
    LOGGER.debug("predicted %d x %d px in %d tiles (halo %d px at 10 m)", H, W, len(tiles), halo_10m)
    return out

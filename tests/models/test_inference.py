"""Tiled 2.5 m inference: exact stitching with a large enough halo, broken by a too-small one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import get_args

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch convention)

from s2agri.models.inference import (
    BICUBIC_CONTEXT_10M,
    DEFAULT_HALO_10M,
    SCALE,
    TTA_TRANSFORMS,
    Dihedral,
    axis_tiles,
    predict_tiled,
    tile_halo_10m,
)
from s2agri.models.names import TTAMode

H, W = 13, 17  # 10 m box, deliberately not a multiple of the tile sizes


def _box3x3(z: torch.Tensor) -> torch.Tensor:
    channels = z.shape[1]
    kernel = z.new_ones(channels, 1, 3, 3)
    return F.conv2d(z, kernel, padding=1, groups=channels)


class LocalGraphNet(nn.Module):
    """Max over time, 1x1 projection, bicubic x4, then ``n_layers`` dense GCN layers at 2.5 m.

    A GCN layer on the 8-connected grid with self loops is ``s * box3x3(s * (H W))`` with
    ``s = deg**-0.5`` (9 inside, 6 on edges, 4 at corners) and zero padding: the output depends on
    the inputs within 1 px and on where the box border is. Receptive halo: ``n_layers`` px at 2.5 m.
    """

    name = "test-local-graph"

    def __init__(self, n_channels: int = 3, hidden: int = 5, n_layers: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(n_channels, hidden, 1)
        self.layers = nn.ModuleList(
            nn.Conv2d(hidden, 1 if i == n_layers - 1 else hidden, 1, bias=False) for i in range(n_layers)
        )
        for layer in self.layers:  # O(1) activations at any depth, so tiling errors show
            nn.init.normal_(layer.weight, std=0.8)
        self.receptive_halo_2p5m = n_layers
        self.max_batch = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.max_batch = max(self.max_batch, x.shape[0])
        z = self.proj(x.amax(dim=1))
        z = F.interpolate(z, scale_factor=SCALE, mode="bicubic", align_corners=False)
        s = _box3x3(z.new_ones(1, 1, *z.shape[-2:])).rsqrt()
        for i, layer in enumerate(self.layers):
            z = s * _box3x3(s * layer(z))
            if i < len(self.layers) - 1:
                z = torch.relu(z)
        return z


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: much faster than two busy-waiting ones on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> LocalGraphNet:
    torch.manual_seed(0)
    return LocalGraphNet()


@pytest.fixture
def box() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.normal(size=(4, 3, H, W)).astype(np.float32)


def _whole(model: nn.Module, box: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(box)[None]))[0, 0].numpy()


def test_scale_matches_the_data_contract() -> None:
    from s2agri.tasks.contract import SCALE as CONTRACT_SCALE

    assert SCALE == CONTRACT_SCALE


def test_tile_halo_10m() -> None:
    assert tile_halo_10m(0) == BICUBIC_CONTEXT_10M == 2
    assert tile_halo_10m(5) == 4  # GCNN with 5 layers: ceil(5 / 4) + 2
    assert tile_halo_10m(8, upsample_context=0) == 2
    with pytest.raises(ValueError, match=">= 0"):
        tile_halo_10m(-1)


@pytest.mark.parametrize(
    ("size", "tile", "halo"), [(13, 4, 2), (17, 5, 3), (7, 10, 2), (13, 1, 0), (20, 6, 20)]
)
def test_axis_tiles_partition_and_cover_the_halo(size: int, tile: int, halo: int) -> None:
    tiles = axis_tiles(size, tile, halo)
    window = min(tile + 2 * halo, size)
    assert [t[0] for t in tiles] == list(range(0, size, tile))
    assert tiles[-1][1] == size
    for (start, stop, wstart), nxt in zip(tiles, [*tiles[1:], None], strict=True):
        if nxt is not None:
            assert nxt[0] == stop
        assert wstart >= 0 and wstart + window <= size
        assert wstart <= max(start - halo, 0)
        assert wstart + window >= min(stop + halo, size)


@pytest.mark.parametrize("tile", [1, 3, 4, 5, 7, 16, 64])
def test_tiled_equals_whole_box(model: LocalGraphNet, box: np.ndarray, tile: int) -> None:
    expected = _whole(model, box)
    got = predict_tiled(model, box, tile=tile, batch_size=3)
    assert got.shape == (SCALE * H, SCALE * W) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("halo", "upsample_context"),
    [(0, 0), (2, 0), (0, 1)],  # no context at all; the 2.5 m halo only; part of the bicubic context only
)
def test_too_small_halo_breaks_equality(
    model: LocalGraphNet, box: np.ndarray, halo: int, upsample_context: int
) -> None:
    expected = _whole(model, box)
    got = predict_tiled(model, box, tile=4, halo=halo, upsample_context=upsample_context)
    assert np.abs(got - expected).max() > 1e-4


def test_deeper_model_uses_its_receptive_halo(box: np.ndarray) -> None:
    torch.manual_seed(2)
    deep = LocalGraphNet(n_layers=6)  # halo 6 px at 2.5 m -> ceil(6 / 4) + 2 = 4 px at 10 m (3 needed)
    expected = _whole(deep, box)
    np.testing.assert_allclose(predict_tiled(deep, box, tile=3), expected, atol=1e-5, rtol=0)
    assert np.abs(predict_tiled(deep, box, tile=3, halo=0) - expected).max() > 1e-4


def test_batches_are_bounded_and_batch_size_does_not_matter(model: LocalGraphNet, box: np.ndarray) -> None:
    one = predict_tiled(model, box, tile=4, batch_size=1)
    assert model.max_batch == 1
    many = predict_tiled(model, box, tile=4, batch_size=5)
    assert model.max_batch == 5
    np.testing.assert_allclose(one, many, atol=1e-6, rtol=0)


def test_tensor_and_read_only_array_inputs(model: LocalGraphNet, box: np.ndarray) -> None:
    expected = predict_tiled(model, box, tile=5)
    frozen = box.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(predict_tiled(model, frozen, tile=5), expected)
    np.testing.assert_allclose(predict_tiled(model, torch.from_numpy(box), tile=5), expected, atol=1e-7)
    as_float64 = predict_tiled(model, box.astype(np.float64), tile=5)
    np.testing.assert_allclose(as_float64, expected, atol=1e-7)


def test_probabilities_and_mode_restored(model: LocalGraphNet, box: np.ndarray) -> None:
    model.train()
    proba = predict_tiled(model, box, tile=6)
    assert model.training
    assert np.all((proba >= 0) & (proba <= 1))


def test_unknown_halo_warns_and_uses_default(
    model: LocalGraphNet, box: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    model.receptive_halo_2p5m = None
    with caplog.at_level(logging.WARNING, logger="s2agri.models.inference"):
        got = predict_tiled(model, box, tile=4)
    assert f"{DEFAULT_HALO_10M} px" in caplog.text
    np.testing.assert_allclose(got, _whole(model, box), atol=1e-5, rtol=0)


def test_bad_inputs(model: LocalGraphNet, box: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        predict_tiled(model, box[0])
    with pytest.raises(ValueError, match="tile and batch_size"):
        predict_tiled(model, box, tile=0)

    class NotUpsampling(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0, :1]

    with pytest.raises(ValueError, match="not 4x logits"):
        predict_tiled(NotUpsampling(), box, halo=0)


class ColumnRamp(nn.Module):
    """Logit = the 2.5 m column index: a model with a preferred orientation (not equivariant)."""

    receptive_halo_2p5m = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = x.shape
        ramp = torch.arange(SCALE * w, dtype=torch.float32).expand(b, 1, SCALE * h, SCALE * w)
        return ramp.clone()


def test_dihedral_transforms_are_the_8_symmetries_and_undo_exactly() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    assert tuple(TTA_TRANSFORMS) == get_args(TTAMode)  # the config's modes
    assert [len(TTA_TRANSFORMS[m]) for m in ("none", "flips", "dihedral")] == [1, 4, 8]
    assert TTA_TRANSFORMS["none"] == (Dihedral(False, False, False),)
    images = set()
    for t in TTA_TRANSFORMS["dihedral"]:
        moved = t.apply(x)
        assert moved.shape == ((2, 3, 5, 4) if t.transpose else x.shape)
        assert np.array_equal(t.undo(moved), x)
        images.add(moved[0, 0].tobytes() + bytes(moved.shape[-2:]))
    assert len(images) == 8
    flip_both = Dihedral(False, True, True).apply(x)
    assert np.array_equal(flip_both, x[..., ::-1, ::-1])
    assert np.array_equal(Dihedral(True, True, False).apply(x)[0, 0], np.rot90(x[0, 0], 1))
    assert np.array_equal(Dihedral(True, False, True).apply(x)[0, 0], np.rot90(x[0, 0], -1))


@pytest.mark.parametrize("tta", ["flips", "dihedral"])
def test_tta_of_an_equivariant_model_is_its_plain_prediction(
    model: LocalGraphNet, box: np.ndarray, tta: str
) -> None:
    plain = predict_tiled(model, box, tile=5)
    averaged = predict_tiled(model, torch.from_numpy(box), tile=5, tta=tta)
    assert averaged.shape == plain.shape == (SCALE * H, SCALE * W) and averaged.dtype == np.float32
    assert np.allclose(averaged, plain, atol=1e-5)


def test_tta_averages_the_probabilities_mapped_back() -> None:
    x = np.zeros((2, 3, H, W), dtype=np.float32)
    rows = np.arange(SCALE * H, dtype=np.float64)[:, None]
    cols = np.arange(SCALE * W, dtype=np.float64)[None, :]
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    col_pair = (sigmoid(cols) + sigmoid(SCALE * W - 1 - cols)) / 2
    row_pair = (sigmoid(rows) + sigmoid(SCALE * H - 1 - rows)) / 2
    assert np.allclose(
        predict_tiled(ColumnRamp(), x, tile=32), np.broadcast_to(sigmoid(cols), (SCALE * H, SCALE * W))
    )
    assert np.allclose(
        predict_tiled(ColumnRamp(), x, tile=32, tta="flips"),
        np.broadcast_to(col_pair, (SCALE * H, SCALE * W)),
    )
    # transposed passes see the rows as columns: half the passes give the row ramp back
    assert np.allclose(predict_tiled(ColumnRamp(), x, tile=32, tta="dihedral"), (col_pair + row_pair) / 2)
    with pytest.raises(ValueError, match="tta='d4' is unknown"):
        predict_tiled(ColumnRamp(), x, tta="d4")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mlp", "lstm", "gcnn"])
def test_models_declared_equivariant_are_and_get_one_pass(name: str) -> None:
    from s2agri.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name) if name == "gcnn" else create_model(name, n_frames=3)
    assert model.dihedral_equivariant
    x = np.random.default_rng(2).normal(size=(3, 12, H, W)).astype(np.float32)
    plain = predict_tiled(model, x, tile=8)
    passes = [t.undo(predict_tiled(model, t.apply(x), tile=8)) for t in TTA_TRANSFORMS["dihedral"]]
    for moved in passes:  # every orientation gives the same map: TTA would only repeat it
        np.testing.assert_allclose(moved, plain, atol=1e-5)
    whole = predict_tiled(model, x, tile=32)  # one tile: one forward pass
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    np.testing.assert_array_equal(predict_tiled(model, x, tile=32, tta="dihedral"), whole)
    assert len(calls) == 1  # TTA skipped: one pass, not 8


@pytest.mark.parametrize("name", ["unet-tc", "convstar", "fg-unet", "deeplab"])
def test_convolutional_segmenters_are_not_declared_equivariant(name: str) -> None:
    from s2agri.models.registry import get_constructor

    assert not getattr(get_constructor(name), "dihedral_equivariant", False)

"""GCNN of seed 000: dense grid formulation against torch-geometric, halos, shapes and gradients."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F  # noqa: N812 (torch convention)

from s2agri.models import gcnn
from s2agri.models.gcnn import GCNN, GCNNGeometric
from s2agri.models.registry import available_models, create_model, model_summary

pytest.importorskip("torch_geometric")


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every parameter (biases included) drawn from N(0, 0.5²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def series(B: int, T: int, H: int, W: int, seed: int = 1) -> torch.Tensor:
    """A (B, T, 12, H, W) float32 input in [0, 1] with some invalid (zeroed) observations."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(B, T, 12, H, W, generator=gen)
    return x * (torch.rand(B, T, 1, H, W, generator=gen) > 0.2)


def grid_edges(h: int, w: int) -> set[tuple[int, int]]:
    """8-connected grid edges plus self loops, row-major node ids, built by brute force."""
    return {
        (i * w + j, a * w + b)
        for i in range(h)
        for j in range(w)
        for a in range(max(0, i - 1), min(h, i + 2))
        for b in range(max(0, j - 1), min(w, j + 2))
    }


def normalised_adjacency(h: int, w: int) -> torch.Tensor:
    """Â = D^-1/2 (A + I) D^-1/2 as a dense (h w, h w) float64 matrix."""
    A = torch.zeros(h * w, h * w, dtype=torch.float64)
    for i, j in grid_edges(h, w):
        A[i, j] = 1.0
    s = A.sum(dim=1).rsqrt()
    return s[:, None] * A * s[None, :]


def test_parameter_count_is_the_papers() -> None:
    model = create_model("gcnn")
    assert isinstance(model, GCNN) and model.name == "gcnn"
    expected = 80 * 64 + 64 + 64 * 32 + 32 + 32 * 16 + 16 + 16 * 8 + 8 + 8 * 1 + 1
    assert expected == 7937
    assert model.n_parameters == expected
    assert model_summary(model)["n_parameters"] == expected
    assert "gcnn" in available_models()
    assert GCNNGeometric().n_parameters == expected


def test_constructor_arguments_are_json() -> None:
    model = create_model("gcnn", n_features=40, hidden="16,8", scale=2)
    assert json.loads(json.dumps(model.config)) == {"n_features": 40, "hidden": "16,8", "scale": 2}
    assert model.n_parameters == 40 * 16 + 16 + 16 * 8 + 8 + 8 + 1
    assert model(series(1, 2, 3, 5)).shape == (1, 1, 6, 10)
    with pytest.raises(ValueError, match="widths"):
        GCNN(hidden="64,x")
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        GCNN()(torch.rand(1, 12, 4, 4))


def test_degree_normalisation_by_hand() -> None:
    s = gcnn.grid_norm(5, 7)
    assert s[0, 0] == s[0, -1] == s[-1, 0] == s[-1, -1] == pytest.approx(1 / 2)  # corners: deg 4
    for edge in (s[0, 3], s[-1, 2], s[2, 0], s[3, -1]):
        assert edge == pytest.approx(1 / math.sqrt(6))  # edges: deg 6
    assert torch.allclose(s[1:-1, 1:-1], torch.full((3, 5), 1 / 3, dtype=torch.float64))  # deg 9
    row = gcnn.grid_norm(1, 4)  # a single row: ends deg 2, inside deg 3
    assert row.flatten().tolist() == pytest.approx([2**-0.5, 3**-0.5, 3**-0.5, 2**-0.5])
    assert gcnn.grid_norm(1, 1).item() == 1.0


@pytest.mark.parametrize("shape", [(5, 7), (1, 6), (6, 1), (2, 2), (1, 1), (12, 9)])
def test_torch_geometric_grid_is_8_connected_with_self_loops(shape: tuple[int, int]) -> None:
    from torch_geometric.utils import grid

    edge_index, _ = grid(*shape)
    edges = list(map(tuple, edge_index.t().tolist()))
    assert len(edges) == len(set(edges))  # one self loop per node, no duplicate edge
    assert set(edges) == grid_edges(*shape)


@pytest.mark.parametrize("shape", [(5, 7), (1, 6), (6, 1), (2, 2), (1, 1)])
def test_dense_aggregation_is_the_normalised_adjacency(shape: tuple[int, int]) -> None:
    h, w = shape
    z = torch.randn(2, 3, h, w, dtype=torch.float64)
    expected = torch.einsum("ij,bcj->bci", normalised_adjacency(h, w), z.reshape(2, 3, h * w))
    expected = expected.reshape(2, 3, h, w)
    torch.testing.assert_close(gcnn.grid_propagate(z), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gcnn.grid_upsample_propagate(z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 2), (3, 5), (7, 4)])
@pytest.mark.parametrize("scale", [2, 4])
def test_fused_upsampling_and_aggregation(shape: tuple[int, int], scale: int) -> None:
    z = torch.randn(2, 3, *shape, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    expected = gcnn.grid_propagate(gcnn.upsample_bicubic(z, scale)) + bias[:, None, None]
    fused = gcnn.grid_upsample_propagate(z, scale, bias)
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1, 4])
def test_fused_operator_gradient(scale: int) -> None:
    z = torch.randn(2, 3, 3, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, b: gcnn.grid_upsample_propagate(t, scale, b), (z, bias))


@pytest.mark.parametrize("L", [1, 5, 36, 79, 80, 81, 160, 444, 480])
def test_adaptive_max_pooling_matches_torch(L: int) -> None:
    x = torch.randn(2, L, 3, 4)
    expected = F.adaptive_max_pool1d(x.flatten(2).transpose(1, 2), 80).transpose(1, 2).reshape(2, 80, 3, 4)
    assert torch.equal(gcnn.adaptive_max_pool_channels(x, 80), expected)


@pytest.mark.parametrize("shape", [(5, 7), (1, 9), (9, 1), (2, 2), (12, 9)])
def test_gcn_matches_torch_geometric(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = randomised(GCNN())
    reference = GCNNGeometric.from_dense(model)
    features = torch.rand(2, 80, *shape)
    torch.testing.assert_close(model.gcn(features), reference.gcn(features), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("T", "H", "W"), [(3, 1, 1), (7, 2, 3), (40, 3, 2)])
def test_forward_matches_torch_geometric(T: int, H: int, W: int) -> None:
    model = randomised(GCNN(), seed=2)
    reference = GCNNGeometric.from_dense(model)
    x = series(2, T, H, W)
    out = model(x)
    assert out.shape == (2, 1, 4 * H, 4 * W)
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, model.gcn(model.features(x)), rtol=1e-5, atol=1e-5)


def test_gradients_match_torch_geometric() -> None:
    model = randomised(GCNN(), seed=3)
    reference = GCNNGeometric.from_dense(model)
    x = series(2, 5, 3, 4)
    target = (torch.rand(2, 1, 12, 16) > 0.5).float()
    for m in (model, reference):
        m.zero_grad()
        F.binary_cross_entropy_with_logits(m(x), target).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_variable_number_of_frames() -> None:
    model = GCNN().eval()
    with torch.no_grad():
        for T, (H, W) in [(3, (5, 6)), (40, (4, 4)), (19, (6, 3))]:  # T * C = 36 < 80, 480, 228
            out = model(series(2, T, H, W))
            assert out.shape == (2, 1, 4 * H, 4 * W) and out.dtype == torch.float32
            assert torch.isfinite(out).all()


def test_gcn_crop_with_receptive_halo_is_exact() -> None:
    model = randomised(GCNN(), seed=4)
    halo = model.receptive_halo_2p5m
    assert halo == 5  # 4 hops + 1: the cut nodes' degrees change, and Â_ij = (d_i d_j)^-1/2
    features = torch.rand(1, 80, 40, 36)
    with torch.no_grad():
        full = model.gcn(features)[..., 12:28, 10:26]
        crop = model.gcn(features[..., 12 - halo : 28 + halo, 10 - halo : 26 + halo])
        torch.testing.assert_close(crop[..., halo:-halo, halo:-halo], full, rtol=0, atol=1e-5)
        short = model.gcn(features[..., 8:32, 6:30])[..., 4:-4, 4:-4]  # 4 px: not enough
    assert (short - full).abs().max() > 1e-4


def test_input_crop_with_10m_halo_is_exact() -> None:
    model = randomised(GCNN(), seed=5)
    halo = model.input_halo_10m
    assert halo == 3  # bicubic spoils 6 rows at 2.5 m next to a cut, 4 hops carry them to 10
    x = series(1, 4, 24, 22)
    with torch.no_grad():
        full = model(x)[..., 32:64, 28:60]
        crop = model(x[..., 8 - halo : 16 + halo, 7 - halo : 15 + halo])[
            ..., 4 * halo : -4 * halo, 4 * halo : -4 * halo
        ]
        torch.testing.assert_close(crop, full, rtol=0, atol=1e-5)
        short = model(x[..., 6:18, 5:17])[..., 8:-8, 8:-8]  # 2 px at 10 m: not enough
    assert (short - full).abs().max() > 1e-4


def test_tiled_no_grad_forward_equals_whole() -> None:
    model = randomised(GCNN(), seed=6)
    x = series(2, 6, 13, 11)
    whole = model(x)  # gradients enabled: one piece
    model.inference_tile = 4
    with torch.no_grad():
        tiled = model(x)
    torch.testing.assert_close(tiled, whole.detach(), rtol=0, atol=1e-5)


def test_torch_geometric_is_imported_lazily() -> None:
    code = (
        "import sys, torch\n"
        "from s2agri.models.registry import create_model\n"
        "create_model('gcnn')(torch.rand(1, 2, 12, 3, 3))\n"
        "assert 'torch_geometric' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

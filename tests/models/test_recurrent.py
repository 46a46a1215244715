"""ConvLSTM / ConvSTAR (seed 004): shapes, hand-unrolled cells, parameter counts, order, exact halo."""

from __future__ import annotations

import json

import pytest
import torch
from model_checks import fit_losses
from torch.nn import functional as F  # noqa: N812

import s2agri.models.recurrent  # noqa: F401 (registers the models until the registry lists the module)
from s2agri.models.recurrent import PAPER_CONFIG, ConvLSTM, ConvSTAR, RecurrentSegmenter
from s2agri.models.registry import create_model, model_summary

torch.set_num_threads(1)

NAMES = ["convlstm", "convstar"]
TINY = {"n_bands": 2, "hidden": 3, "n_layers": 2, "head_width": 2}


def months(B: int, M: int, H: int, W: int, C: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, M, C, H, W, generator=gen)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [13, 32])
def test_output_shape_and_dtype(name: str, size: int) -> None:
    model = create_model(name, hidden=8, head_width=4).eval()
    with torch.no_grad():
        out = model(months(2, 3, size, size))
    assert out.shape == (2, 1, 4 * size, 4 * size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_parameter_counts_by_hand() -> None:
    # TINY: C = 2 bands, h = 3, k = 3, head w = 2, s = 4.
    # ConvLSTM cell: 4h (C k² + h k² + 1): layer 1 12 * (18 + 27 + 1) = 552, layer 2 12 * 55 = 660.
    # ConvSTAR cell: 2h (C k² + 1) + h² k²: layer 1 6 * 19 + 81 = 195, layer 2 6 * 28 + 81 = 249.
    # Head: 3x3 h -> w s² 3*32*9 + 32 = 896, 3x3 w -> w 36 + 2, 1x1 w -> 1 2 + 1: 937.
    lstm, star = ConvLSTM(**TINY), ConvSTAR(**TINY)
    assert lstm.n_parameters == 552 + 660 + 937 == 2149
    assert star.n_parameters == 195 + 249 + 937 == 1381
    assert model_summary(star)["n_parameters"] == 1381
    assert ConvLSTM().n_parameters == 162_257 and ConvSTAR().n_parameters == 81_489
    assert ConvLSTM(**PAPER_CONFIG).n_parameters == 840_145
    assert ConvSTAR(**PAPER_CONFIG).n_parameters == 346_705


@pytest.mark.parametrize(("C", "h", "k"), [(12, 32, 3), (4, 64, 3), (3, 5, 5)])
def test_convstar_has_fewer_parameters_than_convlstm(C: int, h: int, k: int) -> None:
    lstm = ConvLSTM(n_bands=C, hidden=h, n_layers=1, kernel_size=k).cells[0]
    star = ConvSTAR(n_bands=C, hidden=h, n_layers=1, kernel_size=k).cells[0]
    n_lstm = sum(p.numel() for p in lstm.parameters())
    n_star = sum(p.numel() for p in star.parameters())
    assert n_lstm == 4 * h * (C * k * k + h * k * k + 1)
    assert n_star == 2 * h * (C * k * k + 1) + h * h * k * k
    assert n_star < n_lstm


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **TINY)
    target = (torch.rand(2, 1, 28, 36) > 0.5).float()
    F.binary_cross_entropy_with_logits(model(months(2, 3, 7, 9, C=2)), target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic_and_per_sample(name: str) -> None:
    model = create_model(name, **TINY).eval()
    x = months(3, 4, 11, 10, C=2, seed=4)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_json_config(name: str) -> None:
    model = create_model(name, **json.loads(json.dumps(TINY)))
    assert model.name == name and isinstance(model, RecurrentSegmenter)
    assert create_model(name, **model.config).n_parameters == model.n_parameters
    assert model.halo_is_exact
    assert (model.input_halo_10m, model.receptive_halo_2p5m) == ((6 + 2 - 1) + 2, 4 * 8 + 1)
    with pytest.raises(ValueError, match="bands"):
        model(months(1, 2, 5, 5, C=3))


def _lstm_step(cell, x, h, c):  # type: ignore[no-untyped-def]
    w = torch.cat([cell.input_conv.weight, cell.hidden_conv.weight], dim=1)  # the reference's conv
    gates = F.conv2d(torch.cat([x, h], dim=1), w, cell.input_conv.bias, padding=1)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _star_step(cell, x, h, _c):  # type: ignore[no-untyped-def]
    hidden = h.shape[1]
    w_in, b_in = cell.input_conv.weight, cell.input_conv.bias
    w_gate = torch.cat([w_in[:hidden], cell.hidden_conv.weight], dim=1)  # the reference's gate conv
    k = torch.sigmoid(F.conv2d(torch.cat([x, h], dim=1), w_gate, b_in[:hidden], padding=1))
    z = torch.tanh(F.conv2d(x, w_in[hidden:], b_in[hidden:], padding=1))
    return k * h + (1 - k) * z, None


@pytest.mark.parametrize(("name", "step"), [("convlstm", _lstm_step), ("convstar", _star_step)])
def test_matches_a_hand_unrolled_time_major_loop(name: str, step) -> None:  # type: ignore[no-untyped-def]
    """Two layers, two months, unrolled time step by time step (the reference's loop order)."""
    torch.manual_seed(2)
    model = create_model(name, **TINY).eval()
    x = months(2, 2, 6, 5, C=2, seed=9)
    zeros = torch.zeros(2, 3, 6, 5)
    state = [(zeros, zeros), (zeros, zeros)]
    with torch.no_grad():
        for t in range(2):
            inp = x[:, t]
            for layer, cell in enumerate(model.cells):
                state[layer] = step(cell, inp, *state[layer])
                inp = state[layer][0]
        last = state[1][0]
        torch.testing.assert_close(model.encode(x), last, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x), model.head(last), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_output_depends_on_month_order(name: str) -> None:
    model = create_model(name, **TINY).eval()
    x = months(1, 3, 8, 8, C=2, seed=10)
    with torch.no_grad():
        out, reversed_out = model(x), model(x.flip(1))
    assert (out - reversed_out).abs().max() > 1e-4


def test_convstar_initialisation_follows_the_reference() -> None:
    cell = ConvSTAR(n_bands=4, hidden=6).cells[0]
    gate = torch.cat([cell.input_conv.weight[:6], cell.hidden_conv.weight], dim=1).flatten(1)
    torch.testing.assert_close(gate @ gate.T, torch.eye(6), rtol=1e-5, atol=1e-5)  # orthogonal rows
    assert torch.equal(cell.input_conv.bias[:6], torch.ones(6))  # gate bias 1
    assert torch.equal(cell.input_conv.bias[6:], torch.zeros(6))  # update bias 0


@pytest.mark.parametrize("name", NAMES)
def test_halo_makes_crops_exact(name: str) -> None:
    torch.manual_seed(3)
    model = create_model(name, n_bands=2, hidden=3, n_layers=2, head_width=2, n_months=3).eval()
    halo = model.input_halo_10m  # (3 + 2 - 1) + 2 = 6
    assert halo == 6 and model.receptive_halo_2p5m == 4 * 5 + 1
    x = months(1, 3, 40, 40, C=2, seed=11)
    lo, hi = 14, 26  # the 10 m interior compared
    with torch.no_grad():
        full = model(x)[..., 4 * lo : 4 * hi, 4 * lo : 4 * hi]
        for margin in (halo, halo + 3):
            crop = model(x[..., lo - margin : hi + margin, lo - margin : hi + margin])
            inner = crop[..., 4 * margin : -4 * margin, 4 * margin : -4 * margin]
            torch.testing.assert_close(inner, full, rtol=1e-5, atol=1e-6)
    # The halo is tight: the right/bottom 2.5 m sub-pixel of 10 m pixel P reads P + halo, no further.
    x = x.double().requires_grad_(True)
    P = 10
    model.double()(x)[0, 0, 4 * P + 3, 4 * P + 3].backward()
    grad = x.grad.abs().sum(dim=(0, 1, 2))
    assert grad[P + halo, P + halo] > 0
    assert grad[P + halo + 1 :].sum() == 0 and grad[:, P + halo + 1 :].sum() == 0


@pytest.mark.parametrize("name", NAMES)
def test_overfits_one_batch(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, hidden=8, head_width=4)
    x = months(2, 3, 16, 16, seed=7)
    target = (x[:, -1, :1] > 0.5).float()  # a per-pixel rule on the last month's first band
    target = target.repeat_interleave(4, -1).repeat_interleave(4, -2)  # at 2.5 m
    losses = fit_losses(model, x, target, steps=80, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses[::10]

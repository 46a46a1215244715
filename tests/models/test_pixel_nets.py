"""Per-pixel MLP and LSTM: shapes at 2.5 m, per-pixel independence, counts, gradients, overfitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_checks import overfit_losses, series
from torch.nn import functional as F  # noqa: N812 (torch convention)

from s2agri.models.inference import predict_tiled
from s2agri.models.pixel_nets import (
    LSTM_PAPER_CONFIG,
    MLP_PAPER_CONFIG,
    PAPER_CONFIG,
    PixelLSTM,
    PixelMLP,
    PixelModel,
)
from s2agri.models.registry import available_models, create_model, model_summary

torch.set_num_threads(1)

NAMES = ["mlp", "lstm"]
#: Tiny configurations of each model (T = 3 frames of 12 bands).
TINY = {
    "mlp": {"n_frames": 3, "hidden": "8,4"},
    "lstm": {"n_frames": 3, "hidden_size": 8, "num_layers": 2},
}


def tiny(name: str, **kwargs: object) -> PixelModel:
    torch.manual_seed(0)
    return create_model(name, **{**TINY[name], **kwargs})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(13, 13), (32, 32), (1, 5)])
def test_output_shape_and_dtype_at_2p5m(name: str, size: tuple[int, int]) -> None:
    model = tiny(name).eval()
    H, W = size
    with torch.no_grad():
        out = model(series(2, 3, H, W))
    assert out.shape == (2, 1, 4 * H, 4 * W) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_logits_at_a_pixel_do_not_depend_on_other_pixels(name: str) -> None:
    model = tiny(name).eval()
    x = series(1, 3, 6, 7, seed=1)
    y = x.clone()
    y[..., 2, 4] += 5.0  # perturb the right neighbour of (2, 3), every frame and band
    with torch.no_grad():
        before, after = model.logits_10m(x), model.logits_10m(y)
    assert before.shape == (1, 1, 6, 7)
    changed = (before != after)[0, 0]
    assert changed[2, 4] and int(changed.sum()) == 1  # only the perturbed pixel moves
    # The 2.5 m output is the bicubic x4 of those logits.
    torch.testing.assert_close(model(x), F.interpolate(before, scale_factor=4, mode="bicubic"))


@pytest.mark.parametrize("name", NAMES)
def test_tiled_inference_is_exact(name: str) -> None:
    model = tiny(name)
    assert model.receptive_halo_2p5m == 0 and model.halo_is_exact
    x = series(1, 3, 21, 18, seed=2)[0]
    with torch.no_grad():
        whole = torch.sigmoid(model.eval()(x[None]))[0, 0].numpy()
    tiled = predict_tiled(model, x, tile=5, batch_size=3)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)


def test_lstm_depends_on_frame_order() -> None:
    model = tiny("lstm").eval()
    x = series(1, 3, 4, 4, seed=3)
    with torch.no_grad():
        forward, backward = model.logits_10m(x), model.logits_10m(x.flip(1))
    assert (forward - backward).abs().max() > 1e-4


def test_mlp_sees_frames_as_channels() -> None:
    """Permuting the frames and the matching input channels of the first 1x1 conv changes nothing."""
    model = tiny("mlp").eval()
    x = series(2, 3, 5, 6, seed=4)
    order = [2, 0, 1]
    permuted = tiny("mlp").eval()
    permuted.load_state_dict(model.state_dict())
    w = permuted.path[0].weight.data  # (8, T * C, 1, 1), channel t * C + c
    permuted.path[0].weight.data = w.view(8, 3, 12, 1, 1)[:, order].reshape_as(w)
    with torch.no_grad():
        torch.testing.assert_close(permuted.logits_10m(x[:, order]), model.logits_10m(x))
        assert not torch.allclose(model.logits_10m(x[:, order]), model.logits_10m(x))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # (2*3*4 + 4) + (4*2 + 2) + (2*1 + 1): stacked T*C = 6 channels, widths 4, 2, classifier.
        (PixelMLP(n_frames=2, n_bands=3, hidden="4,2"), 28 + 10 + 3),
        # 2 groups of 1 frame share (3*4 + 4) + (4*2 + 2); classifier on 2 * 2 features: 2*2 + 1.
        (PixelMLP(n_frames=2, n_bands=3, hidden="4,2", groups=2), 16 + 10 + 5),
        # LSTM layer: 4 gates * hidden * (input + hidden) weights + 2 bias vectors of 4 * hidden.
        # 4*4*(3+4) + 2*16 = 144; 4*4*(4+4) + 2*16 = 160; head 4 + 1.
        (PixelLSTM(n_bands=3, hidden_size=4, num_layers=2), 144 + 160 + 5),
        # Pooled: input size 1, 4*4*(1+4) + 32 = 112.
        (PixelLSTM(n_bands=3, hidden_size=4, num_layers=2, pooled_features=5), 112 + 160 + 5),
        # Defaults: 240*200+200 + 200*100+100 + 100*50+50 + 50+1.
        (PixelMLP(), 48_200 + 20_100 + 5_050 + 51),
        (PixelMLP(**MLP_PAPER_CONFIG), 73_401),
        # 4*64*(12+64) + 512 = 19,968; 4*64*128 + 512 = 33,280; 64 + 1.
        (PixelLSTM(), 19_968 + 33_280 + 65),
        # Seed 000's LSTM, 331,393 published: 4*128*129 + 1024 + 2 * (4*128*256 + 1024) + 129.
        (PixelLSTM(**LSTM_PAPER_CONFIG), 331_393),
    ],
)
def test_parameter_counts(model: PixelModel, expected: int) -> None:
    assert model.n_parameters == expected
    assert model_summary(model)["n_parameters"] == expected


def test_mlp_reproduces_seed_003_count() -> None:
    """Seed 003 Table 2: "MLP 3 layers" 40,717 = its grouped 1x1 path + a 17-class classifier."""
    model = PixelMLP(n_frames=33, n_bands=10, groups=11)  # 11 groups of 3 dates x 10 bands
    assert model.n_parameters == 6_200 + 20_100 + 5_050 + 551
    # The seed's classifier has 16 more output units, each with 11 * 50 weights and a bias.
    assert model.n_parameters + 16 * (11 * 50 + 1) == 40_717


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = tiny(name)
    x = series(2, 3, 5, 6, seed=5)
    target = (torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    F.binary_cross_entropy_with_logits(model(x), target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic_and_per_sample(name: str) -> None:
    model = tiny(name).eval()
    x = series(3, 3, 7, 5, seed=6)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-6)


def test_lstm_inference_chunks_change_nothing() -> None:
    model = tiny("lstm").eval()
    x = series(2, 3, 6, 5, seed=7)
    with torch.no_grad():
        whole = model.logits_10m(x)
        model.inference_chunk = 7  # 60 pixel sequences in 9 chunks
        torch.testing.assert_close(model.logits_10m(x), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_json_config(name: str) -> None:
    assert name in available_models()
    model = tiny(name, scale=2)
    rebuilt = create_model(name, **json.loads(json.dumps(model.config)))
    assert rebuilt.name == name and rebuilt.config == model.config
    assert rebuilt.eval()(series(1, 3, 4, 5)).shape == (1, 1, 8, 10)
    assert create_model(name, **PAPER_CONFIG[name]).n_parameters > 0


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="n_frames"):
        tiny("mlp")(series(1, 4, 4, 4))
    with pytest.raises(ValueError, match="n_frames"):
        tiny("lstm")(series(1, 4, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        PixelMLP(n_frames=20, groups=3)
    pooled = PixelLSTM(hidden_size=4, num_layers=1, pooled_features=80).eval()
    with torch.no_grad():
        for T in (2, 9):  # any number of frames once pooled
            assert pooled(series(1, T, 3, 4)).shape == (1, 1, 12, 16)


@pytest.mark.parametrize("name", NAMES)
def test_overfits_a_fixed_batch(name: str) -> None:
    """80 Adam steps on one 2-sample 16 x 16 px batch more than halve the BCE loss."""
    model = tiny(name)
    losses = overfit_losses(model, 3, steps=80, lr=3e-2, seed=8)
    assert losses[-1] < 0.5 * losses[0], losses[::10]

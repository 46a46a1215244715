"""Parcel classifiers (TempCNN, Transformer, LSTM): shapes, counts, missing steps, padding, overfit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2agri.models.parcel import (
    LSTM_PAPER_CONFIG,
    TEMPCNN_PAPER_CONFIG,
    TRANSFORMER_PAPER_CONFIG,
    ParcelLSTM,
    ParcelTransformer,
    TempCNN,
    fill_missing,
    predict_proba,
)
from s2agri.models.registry import available_models, create_model, model_summary
from s2agri.tasks import parcel_series

torch.set_num_threads(1)

NAMES = ["tempcnn", "transformer", "lstm-parcel"]
TINY: dict[str, dict] = {
    "tempcnn": {"n_steps": 6, "hidden": 16, "kernel_size": 3, "dropout": 0.0},
    "transformer": {"n_layers": 1, "dim_feedforward": 32, "dropout": 0.0},
    "lstm-parcel": {"hidden": 16, "n_layers": 1, "fc": 16},
}


def series(batch: int = 8, steps: int = 6, features: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, steps, features, generator=torch.Generator().manual_seed(seed))


def test_registered() -> None:
    assert set(NAMES) <= set(available_models())


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_missing_steps(name: str) -> None:
    model = create_model(name, **TINY[name]).eval()
    x = series()
    x[1, 2] = float("nan")  # a fully clouded date
    x[2] = float("nan")  # no valid observation at all
    with torch.no_grad():
        out = model(x)
    assert out.shape == (8, 1) and out.dtype == torch.float32 and torch.isfinite(out).all()
    logits = model.train()(x)
    logits.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        (TempCNN, {}, 39_457),
        (ParcelLSTM, {}, 60_545),
        (ParcelTransformer, {}, 17_609),
        (ParcelTransformer, {"pooling": "cls"}, 17_633),
        (TempCNN, TEMPCNN_PAPER_CONFIG, 647_297),  # 6 monthly steps
        (ParcelTransformer, TRANSFORMER_PAPER_CONFIG, 158_113),
        # the seed's data: 13 bands (F = 26), 11 crop classes; paper ~719 k, ~60 M, ~270 k (code: 171,927)
        (TempCNN, {**TEMPCNN_PAPER_CONFIG, "n_steps": 7, "n_features": 26, "n_outputs": 11}, 719_755),
        (ParcelLSTM, {**LSTM_PAPER_CONFIG, "n_features": 26, "n_outputs": 11}, 60_037_131),
        (ParcelTransformer, {**TRANSFORMER_PAPER_CONFIG, "n_features": 26, "n_outputs": 11}, 171_927),
    ],
)
def test_parameter_counts(cls: type, kwargs: dict, expected: int) -> None:
    with torch.device("meta"):  # counts without allocating the 60 M LSTM
        model = cls(**kwargs)
    assert model.n_parameters == expected
    assert model_summary(model)["n_parameters"] == expected


@pytest.mark.parametrize("name", NAMES)
def test_overfits_a_small_batch(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **TINY[name])
    x = series(batch=32, seed=1)
    x[3, 1] = float("nan")
    y = (torch.rand(32, 1, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_fill_missing_matches_the_numpy_twin() -> None:
    x = series(batch=6, steps=7, features=3, seed=3).numpy()
    x[0, [0, 1, 4]] = np.nan
    x[1] = np.nan
    x[2, 6] = np.nan
    x[3, 2, 1] = np.nan  # one NaN feature: the whole step is missing
    filled = fill_missing(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(filled, parcel_series.fill_missing(x))
    np.testing.assert_array_equal(filled[0, :3], np.repeat(x[0, 2:3], 3, axis=0))  # backward fill
    np.testing.assert_array_equal(filled[0, 4], x[0, 3])  # forward fill
    np.testing.assert_array_equal(filled[1], 0.0)
    np.testing.assert_array_equal(filled[3, 2], x[3, 1])
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[4, 5:] = True  # masked steps are filled like NaN ones
    np.testing.assert_array_equal(
        fill_missing(torch.from_numpy(x), mask)[4, 5:].numpy(), np.repeat(x[4, 4:5], 2, 0)
    )


def test_transformer_ignores_masked_padding() -> None:
    model = ParcelTransformer(n_layers=2, dim_feedforward=32).eval()
    x = series(batch=4, steps=5)
    padded = torch.cat([x, 10 * torch.rand(4, 3, 24)], dim=1)  # garbage in 3 extra steps
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, 5:] = True
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(model(padded, key_padding_mask=mask), reference, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(padded), reference, atol=1e-3)  # unmasked padding matters
        nan_padded = torch.cat([x, torch.full((4, 3, 24), float("nan"))], dim=1)
        torch.testing.assert_close(model(nan_padded), reference, rtol=1e-5, atol=1e-6)  # NaN = masked


def test_transformer_day_of_year_positions_skip_missing_dates() -> None:
    model = ParcelTransformer(n_layers=1, dim_feedforward=32, pooling="cls").eval()
    x = series(batch=3, steps=6)
    doy = torch.tensor([60, 75, 100, 130, 170, 220])
    keep = torch.tensor([0, 1, 3, 5])
    holes = x.clone()
    holes[:, [2, 4]] = float("nan")  # clouded dates, removed or masked: same output
    with torch.no_grad():
        torch.testing.assert_close(
            model(holes, doy=doy), model(x[:, keep], doy=doy[keep]), rtol=1e-5, atol=1e-6
        )
        assert not torch.allclose(model(x, doy=doy), model(x), atol=1e-3)  # positions matter


def test_lstm_ignores_trailing_padding() -> None:
    model = ParcelLSTM(hidden=16, n_layers=2, bidirectional=True).eval()
    x = series(batch=4, steps=5)
    padded = torch.cat([x, torch.rand(4, 3, 24)], dim=1)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, 5:] = True
    mask[0, 3:] = True  # series 0 is 3 steps long
    with torch.no_grad():
        out = model(padded, key_padding_mask=mask)
        torch.testing.assert_close(out[1:], model(x)[1:], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[:1], model(x[:1, :3]), rtol=1e-5, atol=1e-6)


def test_tempcnn_needs_its_length() -> None:
    model = TempCNN(n_steps=6)
    with pytest.raises(ValueError, match="takes 6 steps"):
        model(series(steps=5))
    with pytest.raises(ValueError, match=r"\(B, T, 24\)"):
        model(series(features=12))


def test_predict_proba() -> None:
    model = ParcelTransformer(n_layers=1, dim_feedforward=16)
    x = series(batch=10).numpy()
    proba = predict_proba(model, x, doy=np.arange(6) * 30 + 60, batch_size=3)
    assert proba.shape == (10,) and proba.dtype == np.float32 and ((proba > 0) & (proba < 1)).all()
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x), doy=torch.arange(6) * 30 + 60))[:, 0].numpy()
    np.testing.assert_allclose(proba, expected, rtol=1e-6)

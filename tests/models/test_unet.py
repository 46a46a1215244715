"""U-Net-B and U-Net-TC: shapes at 2.5 m, parameter counts, gradients, eval determinism, registry."""

from __future__ import annotations

import json

import pytest
import torch

from s2agri.models.registry import available_models, create_model, model_summary
from s2agri.models.unet import PAPER_CONFIG, UNet, UNetB, UNetTC

NAMES = ["unet-b", "unet-tc"]


def series(B: int, T: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 12, H, W, generator=gen)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(20, 20), (33, 45), (1, 1), (16, 48)])
def test_output_shape_at_2p5m(name: str, size: tuple[int, int]) -> None:
    model = create_model(name, n_frames=3, base_width=8).eval()
    H, W = size
    with torch.no_grad():
        out = model(series(2, 3, H, W))
    assert out.shape == (2, 1, 4 * H, 4 * W) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        (UNetB, {}, 1_117_393),
        (UNetTC, {}, 1_978_849),
        (UNetB, PAPER_CONFIG, 17_344_321),  # paper: 17.3 M
        (UNetTC, PAPER_CONFIG, 31_115_137),  # paper: 31.1 M
        (UNetB, {"base_width": 64}, 17_436_481),  # 240 stacked channels instead of 80 pooled
        (UNetTC, {"base_width": 64}, 31_207_297),
    ],
)
def test_parameter_counts(cls: type[UNet], kwargs: dict, expected: int) -> None:
    model = cls(**kwargs)
    assert model.n_parameters == expected
    assert model_summary(model)["n_parameters"] == expected


@pytest.mark.parametrize("name", NAMES)
def test_backward_pass(name: str) -> None:
    model = create_model(name, n_frames=2, base_width=4)
    x = series(2, 2, 17, 19)
    target = (torch.rand(2, 1, 68, 76) > 0.5).float()
    torch.nn.functional.binary_cross_entropy_with_logits(model(x), target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic_and_per_sample(name: str) -> None:
    model = create_model(name, n_frames=2, base_width=4)
    model.train()
    model(series(4, 2, 16, 16, seed=3))  # moves the batch-norm running statistics
    model.eval()
    x = series(3, 2, 21, 18, seed=4)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_json_config(name: str) -> None:
    assert name in available_models()
    kwargs = {"n_frames": 4, "n_bands": 12, "base_width": 8, "scale": 2, "pooled_features": 0}
    model = create_model(name, **json.loads(json.dumps(kwargs)))
    assert model.name == name and model.config == kwargs
    assert model.receptive_halo_2p5m == 64 and not model.halo_is_exact
    assert model.eval()(series(1, 4, 9, 10)).shape == (1, 1, 18, 20)


@pytest.mark.parametrize("name", NAMES)
def test_frames_must_match_unless_pooled(name: str) -> None:
    with pytest.raises(ValueError, match="n_frames"):
        create_model(name, n_frames=3, base_width=4)(series(1, 5, 8, 8))
    model = create_model(name, base_width=4, pooled_features=80).eval()
    with torch.no_grad():
        for T in (3, 40, 19):  # any number of frames once pooled, T * C < 80 included
            assert model(series(1, T, 8, 12)).shape == (1, 1, 32, 48)


def test_transposed_head_needs_a_power_of_two_scale() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        UNetTC(scale=3)
    assert UNetB(n_frames=1, base_width=4, scale=3).eval()(series(1, 1, 5, 6)).shape == (1, 1, 15, 18)

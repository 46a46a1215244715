"""Every deep segmenter through ``s2agri train`` / ``s2agri predict``: presets, frames, monthly input."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from eolearn.core import EOPatch
from pydantic import ValidationError

from s2agri.models.presets import paper_configs, preset_kwargs
from s2agri.models.registry import create_model
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask
from s2agri.tasks.monthly import monthly_inputs
from s2agri.tasks.predict_deep import model_input
from s2agri.tasks.prediction import (
    PRED_BOUNDARY,
    PRED_CULTIVATED,
    PRED_DISTANCE,
    PRED_MODEL_KEY,
    PRED_PROBA,
)
from s2agri.tasks.tensors import PercentileNormaliser
from s2agri.workflows import cli
from s2agri.workflows.config import DEEP_MODELS, PARCEL_MODELS, PIXEL_MODELS, MappingConfig, ModelName
from s2agri.workflows.model_store import load_trained
from s2agri.workflows.simulate import simulate_region
from s2agri.workflows.train_deep import frames_for, model_kwargs, months_for

#: Small widths so that one epoch on three 40 px boxes takes seconds.
TINY: dict[str, dict] = {
    "spinet": {"channels": 8, "n_blocks": 1},
    "spinet-nomrf": {"channels": 8, "n_blocks": 1},
    "fg-unet": {"base_width": 8, "hidden": "16,8"},
    "deeplab": {"base_width": 8, "blocks": "1,1,1,1", "aspp_width": 16, "low_level_width": 8},
    "mlp": {"hidden": "16,8"},
    "lstm": {"hidden_size": 8, "num_layers": 1},
    "convlstm": {"hidden": 8, "n_layers": 1},
    "convstar": {"hidden": 8, "n_layers": 1},
    "unet-delineation": {"base_width": 8},
}


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deep-models") / "data"
    simulate_region(out, boxes=3, size=40, seed=1, frames_min=8, frames_max=12)
    return out


def test_cli_choices_are_the_config_models() -> None:
    assert cli.TRAINABLE_MODELS == PIXEL_MODELS + DEEP_MODELS + PARCEL_MODELS
    assert set(typing.get_args(ModelName)) == set(cli.TRAINABLE_MODELS)


def test_presets_give_the_seed_sizes() -> None:
    assert preset_kwargs("spinet", "cpu") == {}
    counts = {
        name: sum(p.numel() for p in create_model(name, **preset_kwargs(name, "paper")).parameters())
        for name in ("spinet", "fg-unet", "lstm", "convstar", "tempcnn")
    }
    assert counts == {
        "spinet": 1_929_674,
        "fg-unet": 543_943,
        "lstm": 331_393,
        "convstar": 346_705,
        "tempcnn": 647_297,
    }
    assert set(paper_configs()) == set(DEEP_MODELS) | set(PARCEL_MODELS)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_kwargs("spinet", "huge")


@pytest.mark.parametrize("name", DEEP_MODELS)
def test_every_segmenter_builds_and_runs_on_the_default_monthly_inputs(name: str) -> None:
    """The default deep.inputs (6 monthly medians) fits every segmenter's CPU preset."""
    config = MappingConfig.model_validate({"train": {"model": name}})
    steps = frames_for(config)
    assert steps == 6 and months_for(config) == (3, 4, 5, 6, 7, 8)
    model = create_model(name, **model_kwargs(config, steps)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, steps, 12, 16, 16))
    assert out.shape[0] == 1 and out.shape[-2:] == (64, 64)
    if name == "fg-unet":
        assert model.groups == 3  # the largest divisor of 6 up to the 5 groups of 20 frames


def test_model_kwargs_merge_preset_params_and_steps() -> None:
    config = MappingConfig.model_validate(
        {"train": {"model": "fg-unet", "preset": "paper", "params": {"groups": 4}}}
    )
    assert model_kwargs(config, 20) == {"base_width": 32, "hidden": "200,100,50", "groups": 4, "n_frames": 20}
    config = MappingConfig.model_validate({"train": {"model": "convstar"}, "deep": {"months": [4, 5, 6]}})
    assert months_for(config) == (4, 5, 6) and frames_for(config) == 3
    assert model_kwargs(config, 3) == {"n_months": 3}
    config = MappingConfig.model_validate({"train": {"model": "spinet"}, "deep": {"all_frames": True}})
    assert frames_for(config) is None and model_kwargs(config, None) == {}
    # deep.inputs monthly: any segmenter reads the monthly medians (fixed T = the months)
    config = MappingConfig.model_validate({"train": {"model": "unet-tc"}, "deep": {"inputs": "monthly"}})
    assert months_for(config) == (3, 4, 5, 6, 7, 8) and frames_for(config) == 6
    assert model_kwargs(config, 6) == {"n_frames": 6}
    assert months_for(MappingConfig.model_validate({"train": {"model": "unet-tc"}})) == (3, 4, 5, 6, 7, 8)
    frames = MappingConfig.model_validate({"train": {"model": "unet-tc"}, "deep": {"inputs": "frames"}})
    assert months_for(frames) is None and frames_for(frames) == 20
    # a section that sets n_frames or all_frames without inputs (older configs) means frames
    assert MappingConfig.model_validate({"deep": {"n_frames": 8}}).deep.inputs == "frames"
    assert MappingConfig.model_validate({"deep": {"all_frames": True}}).deep.inputs == "frames"
    config = MappingConfig.model_validate(
        {"train": {"model": "spinet"}, "deep": {"inputs": "monthly", "all_frames": True}}
    )
    with pytest.raises(S2AgriInputError, match="exclude each other"):
        frames_for(config)
    with pytest.raises(ValueError, match="inputs"):
        MappingConfig.model_validate({"deep": {"inputs": "weekly"}})
    config = MappingConfig.model_validate({"train": {"model": "mlp"}, "deep": {"all_frames": True}})
    with pytest.raises(S2AgriInputError, match=r"needs a fixed deep\.n_frames"):
        frames_for(config)
    # train.params are checked against the constructor when the config is read
    with pytest.raises(ValidationError, match=r"widht are not arguments of deeplab: use .*temporal_groups"):
        MappingConfig.model_validate({"train": {"model": "deeplab", "params": {"widht": 8}}})
    with pytest.raises(ValidationError, match=r"temporal_groups='4' does not fit deeplab's argument"):
        MappingConfig.model_validate({"train": {"model": "deeplab", "params": {"temporal_groups": "4"}}})
    # LightGBM passes other names on to LightGBM; its own arguments are typed
    assert MappingConfig.model_validate({"train": {"params": {"max_depth": 4}}}).train.params == {
        "max_depth": 4
    }
    with pytest.raises(ValidationError, match=r"n_estimators=True does not fit lightgbm's argument"):
        MappingConfig.model_validate({"train": {"params": {"n_estimators": True}}})
    config = MappingConfig.model_validate({"train": {"model": "lstm", "params": {"n_frames": 7}}})
    with pytest.raises(S2AgriInputError, match=r"set deep\.n_frames instead"):
        model_kwargs(config, 20)


def test_months_are_validated() -> None:
    assert MappingConfig().deep.months == (3, 4, 5, 6, 7, 8)
    assert MappingConfig.model_validate({"deep": {"months": [2, 3]}}).deep.months == (2, 3)
    for months in ([3, 2], [13], [], [4, 4]):
        with pytest.raises(ValueError, match="increasing calendar months"):
            MappingConfig.model_validate({"deep": {"months": months}})


def test_monthly_model_input_is_the_normalised_medians(region: Path) -> None:
    patch = ValidMaskTask().execute(
        ReflectanceTask().execute(EOPatch.load(str(region / "eopatches" / "box-000")))
    )
    reflectance, valid = patch.data["REFLECTANCE"], patch.mask["VALID"][..., 0]
    normaliser = PercentileNormaliser(low=[0.0] * 12, high=[0.5] * 12)
    months = (3, 4, 5, 6, 7, 8)
    x = model_input(reflectance, valid, normaliser, 6, months=months, timestamps=patch.timestamps)
    assert x.shape == (6, 12, 40, 40) and x.dtype == np.float32
    # hand check: May (month index 2), band 3, at every pixel with 1..3 valid May observations
    month = np.array([t.month for t in patch.timestamps])
    may = np.flatnonzero(month == 5)
    n_valid = valid[may].sum(axis=0)
    rows, cols = np.nonzero((n_valid > 0) & (n_valid < 4))
    assert rows.size > 20
    for r, c in zip(rows[:20], cols[:20], strict=True):
        frames = may[valid[may, r, c]]
        expected = np.clip(np.median(reflectance[frames, r, c, 3]) / 0.5, 0, 1)
        assert x[2, 3, r, c] == pytest.approx(expected, abs=1e-6)
    medians, observed = monthly_inputs(reflectance, valid, patch.timestamps, months)
    assert medians.shape == (6, 40, 40, 12) and observed.shape == (6, 40, 40)
    with pytest.raises(ValueError, match="need the timestamps"):
        model_input(reflectance, valid, normaliser, 6, months=months)


def test_deeplab_on_monthly_medians_one_group_per_month(region: Path, tmp_path: Path, capsys) -> None:
    """deep.inputs monthly with a frame model: trained and predicted on the 6 monthly medians."""
    config = {
        "train": {"model": "deeplab", "params": {**TINY["deeplab"], "temporal_groups": 6}},
        "deep": {
            "inputs": "monthly",
            "patch_size": 80,
            "tile": 24,
            "samples_per_epoch": 8,
            "trainer": {"max_epochs": 1, "batch_size": 4, "num_threads": 1},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    model = tmp_path / "model"
    boxes = [str(region / "eopatches" / box) for box in ("box-000", "box-001")]
    assert cli.main(["train", *boxes, "--out", str(model), "--config", str(path)]) == 0
    card = json.loads((model / "model_card.json").read_text())
    assert card["months"] == [3, 4, 5, 6, 7, 8] and card["n_frames"] == 6
    trained = load_trained(model)
    assert trained.months == (3, 4, 5, 6, 7, 8) and trained.model.backbone.stem[0][0].in_channels == 6 * 12
    run = tmp_path / "run"
    assert (
        cli.main(["predict", str(region / "eopatches" / "box-002"), "--model", str(model), "--out", str(run)])
        == 0
    )
    proba = EOPatch.load(str(run / "eopatches" / "box-002"))[PRED_PROBA]
    assert proba.shape == (160, 160, 1) and np.isfinite(proba).all()

    # the model owns its inputs: a --config that feeds it frames is refused, naming both values; the
    # pixel features section is not a deep model's input, so it may say anything
    box = str(region / "eopatches" / "box-002")
    frames = tmp_path / "frames.yaml"
    frames.write_text("deep: {inputs: frames, tile: 32}\n")
    code = cli.main(
        ["predict", box, "--model", str(model), "--out", str(tmp_path / "r2"), "--config", str(frames)]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and "--config deep.inputs is frames but model deeplab was trained with deep.inputs monthly" in err
    )
    other = tmp_path / "features.yaml"
    other.write_text("features: {kind: stats5x5}\ndeep: {tile: 32}\n")
    assert (
        cli.main(
            ["predict", box, "--model", str(model), "--out", str(tmp_path / "r3"), "--config", str(other)]
        )
        == 0
    )


@pytest.mark.parametrize("name", sorted(TINY))
def test_train_and_predict_every_new_segmenter(name: str, region: Path, tmp_path: Path, capsys) -> None:
    config = {
        "train": {"model": name, "params": TINY[name]},
        "deep": {
            "n_frames": 8,
            "patch_size": 80,
            "tile": 24,
            "samples_per_epoch": 16,
            "trainer": {"max_epochs": 1, "batch_size": 4, "num_threads": 1},
        },
    }
    if name == "fg-unet":
        config["train"]["params"]["groups"] = 4
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    model = tmp_path / "model"
    boxes = [str(region / "eopatches" / box) for box in ("box-000", "box-001")]
    assert cli.main(["train", *boxes, "--out", str(model), "--config", str(path)]) == 0
    card = json.loads((model / "model_card.json").read_text())
    expected_params = sum(p.numel() for p in load_trained(model).model.parameters() if p.requires_grad)
    assert f"trained {name} ({expected_params} parameters)" in capsys.readouterr().out
    assert card["n_parameters"] == expected_params and card["epochs"] == 1 and card["preset"] == "cpu"
    monthly = name in ("convlstm", "convstar")
    assert card["months"] == ([3, 4, 5, 6, 7, 8] if monthly else None)
    assert card["n_frames"] == (6 if monthly else 8)
    assert card["serialized_bytes"] > 4 * expected_params
    trained = load_trained(model)
    assert trained.months == ((3, 4, 5, 6, 7, 8) if monthly else None)

    run = tmp_path / "run"
    box = str(region / "eopatches" / "box-002")
    assert cli.main(["predict", box, "--model", str(model), "--out", str(run), "--config", str(path)]) == 0
    patch = EOPatch.load(str(run / "eopatches" / "box-002"))
    proba = patch[PRED_PROBA]
    assert proba.shape == (160, 160, 1) and proba.dtype == np.float32
    assert np.isfinite(proba).all() and proba.min() >= 0 and proba.max() <= 1
    # the decision threshold is the one chosen on the validation box's weighted MCC
    assert 0.2 <= card["threshold"] <= 0.8 and card["threshold_selection"]["epoch"] == 1
    assert np.array_equal(patch[PRED_CULTIVATED][..., 0], proba[..., 0] >= card["threshold"])
    assert patch.meta_info[PRED_MODEL_KEY] == name
    delineation = name == "unet-delineation"
    for feature in (PRED_BOUNDARY, PRED_DISTANCE):  # only delineation models predict boundaries
        assert (feature in patch) == delineation
        if delineation:
            values = patch[feature]
            assert values.shape == (160, 160, 1) and values.dtype == np.float32
            assert values.min() >= 0 and values.max() <= 1


def test_paper_preset_from_the_command_line(region: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "deep": {
                    "n_frames": 8,
                    "patch_size": 40,
                    "samples_per_epoch": 16,
                    "trainer": {"max_epochs": 1, "batch_size": 4, "num_threads": 1},
                }
            }
        )
    )
    boxes = [str(region / "eopatches" / box) for box in ("box-000", "box-001")]
    model = tmp_path / "mlp"
    args = [
        "train",
        *boxes,
        "--out",
        str(model),
        "--config",
        str(config),
        "--model",
        "mlp",
        "--preset",
        "paper",
    ]
    assert cli.main(args) == 0
    card = json.loads((model / "model_card.json").read_text())
    # seed 003's MLP (200, 100, 50) on 8 frames x 12 bands
    assert card["preset"] == "paper" and card["n_parameters"] == (96 * 200 + 200) + 20_100 + 5_050 + 51
    checkpoint = torch.load(model / "model.pt", weights_only=True)
    assert checkpoint["mapping_config"]["train"]["preset"] == "paper"


def test_monthly_dataset_patches(region: Path) -> None:
    from s2agri.models.datasets import PatchDataset

    normaliser = PercentileNormaliser(low=[0.0] * 12, high=[0.5] * 12)
    data = PatchDataset(
        [region / "eopatches" / "box-000"],
        normaliser,
        patch_size=80,
        n_frames=3,
        augment=False,
        months=(3, 4, 5, 6, 7, 8),
    )
    item = data[0]
    assert data.n_frames == 6 and item["x"].shape == (6, 12, 20, 20)
    patch = ValidMaskTask().execute(
        ReflectanceTask().execute(EOPatch.load(str(region / "eopatches" / "box-000")))
    )
    whole = model_input(
        patch.data["REFLECTANCE"],
        patch.mask["VALID"],
        normaliser,
        6,
        months=(3, 4, 5, 6, 7, 8),
        timestamps=patch.timestamps,
    )
    np.testing.assert_allclose(item["x"].numpy(), whole[:, :, :20, :20], atol=1e-6)
    assert contract.SCALE == 4

"""The mapping config: defaults, strict keys, validation messages, round trip."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows.config import MappingConfig, dump_config, load_config, validation_problems


def test_defaults_work_without_a_file() -> None:
    config = load_config(None)
    assert config.features.kind == "seasonal"
    assert config.features.n_windows == 6
    assert config.train.model == "lightgbm"
    assert config.train.sample_weights is True
    assert config.predict.threshold is None  # the model's own, chosen on validation boxes
    assert config.predict.cutoff == 0.5
    assert config.predict.mode == "refine"


def test_a_config_naming_only_mode_means_the_5x5_statistics() -> None:
    """Configs written before the seasonal features (``features: {mode: pooled}``) keep their meaning."""
    assert MappingConfig.model_validate({"features": {"mode": "pooled"}}).features.kind == "stats5x5"
    assert MappingConfig.model_validate({"features": {"window": 7}}).features.kind == "stats5x5"
    assert MappingConfig.model_validate({"features": {"n_windows": 4}}).features.kind == "seasonal"


@pytest.mark.parametrize(
    ("features", "problem"),
    [
        ({"neighbourhood": 4}, "neighbourhood must be 0 or odd"),
        ({"season": ["09-01", "03-01"]}, "is empty"),
        ({"season": ["13-01", "03-01"]}, "not a month-day"),
        ({"indices": ["EVI"]}, "indices"),
    ],
)
def test_bad_seasonal_options_are_refused(features, problem) -> None:
    with pytest.raises(ValidationError, match=problem):
        MappingConfig.model_validate({"features": features})


def test_yaml_values_are_read(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  model: random-forest\n  seed: 7\nfeatures:\n  mode: pooled\n")
    config = load_config(path)
    assert config.train.model == "random-forest"
    assert config.train.seed == 7
    assert config.features.mode == "pooled"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train:\n  modle: lightgbm\n", "train.modle: Extra inputs are not permitted"),
        ("colour: red\n", "colour: Extra inputs are not permitted"),
        ("features:\n  window: 4\n", "features.window"),
        ("predict:\n  threshold: 1.5\n", "predict.threshold"),
        ("train:\n  model: xgboost\n", "train.model"),
        ("- a\n- b\n", "must be a mapping"),
        ("train: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(S2AgriInputError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value).strip()


def test_missing_file(tmp_path) -> None:
    with pytest.raises(S2AgriInputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_dump_round_trip(tmp_path) -> None:
    config = MappingConfig.model_validate({"train": {"model": "random-forest", "samples_per_box": 500}})
    path = tmp_path / "config.json"
    dump_config(config, path)
    assert load_config(path) == config
    assert json.loads(path.read_text())["train"]["samples_per_box"] == 500
    assert not list(tmp_path.glob(".*"))


def test_the_seed000_recipe_is_shipped_and_loads_by_name() -> None:
    config = load_config("seed000")
    assert config.features.kind == "stats5x5" and config.features.mode == "per_frame"
    assert config.predict.threshold == 0.5 and config.predict.mode == "proba-upsample"
    assert config.train.sample_weights is False and config.train.threshold_boxes == 0


def test_a_missing_config_names_the_recipes(tmp_path) -> None:
    with pytest.raises(S2AgriInputError, match=r"does not exist: .* recipe name \(seed000, seed000-deep\)"):
        load_config(tmp_path / "nope.yaml")


def test_train_has_one_schema_per_family_chosen_by_the_model() -> None:
    from s2agri.workflows.config import DeepTrainConfig, ParcelTrainConfig, PixelTrainConfig
    from s2agri.workflows.families import family_of

    assert type(MappingConfig().train) is PixelTrainConfig
    deep = MappingConfig.model_validate({"train": {"model": "unet-tc", "seed": 3}}).train
    parcel = MappingConfig.model_validate({"train": {"model": "tempcnn"}}).train
    assert type(deep) is DeepTrainConfig and deep.seed == 3 and not hasattr(deep, "samples_per_box")
    assert type(parcel) is ParcelTrainConfig
    assert family_of("unet-tc").train_config is DeepTrainConfig
    assert family_of("lightgbm").train_config is PixelTrainConfig
    assert family_of("ndvi-rule").train_config is None
    dumped = MappingConfig.model_validate({"train": {"model": "unet-tc"}}).model_dump()["train"]
    assert dumped == {"model": "unet-tc", "preset": "cpu", "params": {}, "seed": 0}
    with pytest.raises(ValidationError) as info:
        MappingConfig.model_validate({"train": {"model": "unet-tc", "modle": 1}})
    assert validation_problems(info.value) == "train.modle: Extra inputs are not permitted"


def test_pixel_settings_of_a_non_pixel_model_are_dropped_at_their_default_else_named(tmp_path) -> None:
    """Configs dumped before the split hold the pixel keys for every model."""
    legacy = MappingConfig().model_dump(mode="json")
    legacy["train"]["model"] = "convstar"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(legacy))
    assert load_config(path).train.model_dump() == {
        "model": "convstar",
        "preset": "cpu",
        "params": {},
        "seed": 0,
    }
    legacy["train"]["samples_per_box"] = 500
    path.write_text(json.dumps(legacy))
    with pytest.raises(S2AgriInputError) as info:
        load_config(path)
    assert "samples_per_box is a setting of the pixel models (lightgbm, random-forest)" in str(info.value)
    assert "deep model convstar does not use it: remove it" in str(info.value)
    assert "\n" not in str(info.value)
    # a trained model's stored config is read as it was written
    stored = MappingConfig.model_validate(legacy, context={"stored": True})
    assert stored.train.model == "convstar"


def test_train_for_model_moves_between_family_schemas() -> None:
    from s2agri.workflows.config import PixelTrainConfig, train_for_model

    pixel = MappingConfig.model_validate({"train": {"seed": 4, "preset": "paper"}}).train
    deep = train_for_model(pixel, "unet-b")
    assert deep.model_dump() == {"model": "unet-b", "preset": "paper", "params": {}, "seed": 4}
    back = train_for_model(deep, "random-forest", preset="cpu")
    assert isinstance(back, PixelTrainConfig) and back.samples_per_box == 20_000 and back.seed == 4
    assert back.preset == "cpu"
    sampled = MappingConfig.model_validate({"train": {"samples_per_box": 500}}).train
    with pytest.raises(ValidationError, match="samples_per_box is a setting of the pixel models"):
        train_for_model(sampled, "tempcnn")
    assert train_for_model(sampled, "random-forest").samples_per_box == 500

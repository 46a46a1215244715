"""The mapping config: defaults, strict keys, validation messages, round trip."""

from __future__ import annotations

import json

import pytest

from s2agri.workflows.config import MappingConfig, dump_config, load_config
from s2agri.workflows.errors import S2AgriInputError


def test_defaults_work_without_a_file() -> None:
    config = load_config(None)
    assert config.features.window == 5
    assert config.features.mode == "per_frame"
    assert config.train.model == "lightgbm"
    assert config.predict.threshold == 0.5


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

"""Model families: every model has one, and no caller branches on lists of model names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from s2agri.models import rule
from s2agri.models.names import FAMILIES, RULE_MODELS, TRAINABLE_MODELS, family_name
from s2agri.models.registry import available_models, get_constructor
from s2agri.tasks import contract
from s2agri.tasks.prediction import NdviRuleTask
from s2agri.workflows.config import MappingConfig
from s2agri.workflows.families import family_of
from s2agri.workflows.mapping import prediction_task, prediction_tasks, required_inputs
from s2agri.workflows.model_store import TrainedModel, load_trained

ROOT = Path(__file__).resolve().parents[2]
#: Family lists callers must not test membership in (they ask the family instead).
FAMILY_LISTS = {"PIXEL_MODELS", "DEEP_MODELS", "PARCEL_MODELS", "RULE_MODELS"}


def test_every_model_has_exactly_one_family() -> None:
    members = [m for models in FAMILIES.values() for m in models]
    assert len(members) == len(set(members))
    builtin = {m for m in available_models() if get_constructor(m).__module__.startswith("s2agri.models")}
    assert set(members) == builtin | set(RULE_MODELS)  # (tests may register models of their own)
    assert set(TRAINABLE_MODELS) == set(members) - set(RULE_MODELS)
    assert RULE_MODELS == (rule.MODEL_NAME,)
    assert family_name("unet-delineation") == "deep" and family_name("tempcnn") == "parcel"
    with pytest.raises(ValueError, match="unknown model 'unet-x'"):
        family_name("unet-x")


def test_family_flags() -> None:
    pixel, deep, parcel, ndvi = (family_of(m) for m in ("lightgbm", "convstar", "tempcnn", "ndvi-rule"))
    assert [f.name for f in (pixel, deep, parcel, ndvi)] == ["pixel", "deep", "parcel", "rule"]
    assert [f.resumable for f in (pixel, deep, parcel, ndvi)] == [
        False,
        True,
        True,
        False,
    ]  # deep and parcel: one torch loop
    assert [f.pixel_features for f in (pixel, deep, parcel, ndvi)] == [True, False, False, False]
    assert [f.known_parcels for f in (pixel, deep, parcel, ndvi)] == [False, False, True, False]
    assert ndvi.train is None and all(f.train is not None for f in (pixel, deep, parcel))
    assert deep.load_checkpoint is not None and pixel.load_checkpoint is None


def test_the_rule_predicts_through_its_family() -> None:
    trained = load_trained("ndvi-rule")
    assert trained.family.name == "rule" and trained.is_rule and not trained.is_deep
    tasks = prediction_tasks(trained, MappingConfig())
    assert len(tasks) == 1 and isinstance(tasks[0], NdviRuleTask)
    assert isinstance(prediction_task(trained, MappingConfig()), NdviRuleTask)


def test_parcel_models_need_the_reference_parcels() -> None:
    parcel = MappingConfig.model_validate({"train": {"model": "tempcnn"}})
    assert contract.REFERENCE in required_inputs(parcel, reference=True)
    assert contract.REFERENCE not in required_inputs(MappingConfig(), reference=True)
    assert TrainedModel("tempcnn", object(), parcel={}).is_parcel


def test_no_module_branches_on_family_lists() -> None:
    """``name in DEEP_MODELS``-style tests live in the families, nowhere else in the package."""
    offenders = []
    for folder in ("tasks", "models", "workflows", "aoi"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Compare) and any(
                    isinstance(op, ast.In | ast.NotIn) for op in node.ops
                ):
                    names = {c.id for c in node.comparators if isinstance(c, ast.Name)}
                    if names & FAMILY_LISTS:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_one_torch_training_loop() -> None:
    """Every torch model trains in models/training.py's Trainer: no other module steps an optimiser."""
    stepping = sorted(
        str(path.relative_to(ROOT))
        for folder in ("models", "workflows", "tasks")
        for path in (ROOT / folder).rglob("*.py")
        if ".step()" in path.read_text(encoding="utf-8")
    )
    assert stepping == ["models/training.py"]

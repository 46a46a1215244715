"""Parcel classifiers in the per-box workflow: scaler, fitting, the classifier task, train and predict."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from eolearn.core import EOPatch
from pydantic import ValidationError

from s2agri.models.checkpoints import CHECKPOINT_KEYS as TRAINER_CHECKPOINT_KEYS
from s2agri.models.checkpoints import load_checkpoint
from s2agri.models.history import CSV_COLUMNS, History
from s2agri.models.parcel import TempCNN
from s2agri.models.parcel_training import (
    ParcelBatches,
    ParcelFeatureScaler,
    fit_parcel_classifier,
    parcel_loaders,
    parcel_trainer_config,
)
from s2agri.models.registry import create_model
from s2agri.models.training import Trainer
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask
from s2agri.tasks.predict_parcel import ParcelClassifierTask, parcel_series
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_MODEL_KEY, PRED_PROBA
from s2agri.tasks.zonal import PARCEL_STATS, ZonalStatisticsTask, parcel_index_map
from s2agri.workflows import cli
from s2agri.workflows.config import MappingConfig
from s2agri.workflows.model_store import load_trained
from s2agri.workflows.simulate import simulate_region
from s2agri.workflows.train_parcel import parcel_model_kwargs, train_parcel_model

CONFIG = """
parcel: {max_epochs: 3}
deep:
  trainer: {num_threads: 1}
"""
FRAMES_CONFIG = """
parcel: {max_epochs: 2, steps: frames}
deep:
  trainer: {num_threads: 1}
"""


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parcel") / "data"
    simulate_region(out, boxes=3, size=40, seed=0, frames_min=6, frames_max=8)
    return out


def _boxes(region: Path, *names: str) -> list[str]:
    return [str(region / "eopatches" / name) for name in names]


@pytest.fixture(scope="module")
def tempcnn_model(region: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tmp_path_factory.mktemp("cfg") / "tempcnn.yaml"
    config.write_text(CONFIG)
    model = tmp_path_factory.mktemp("models") / "tempcnn"
    args = ["train", *_boxes(region, "box-000", "box-001"), "--model", "tempcnn"]
    assert cli.main([*args, "--out", str(model), "--config", str(config)]) == 0
    return model


# --------------------------------------------------------------------------- scaler
def test_scaler_ignores_and_keeps_nan_and_round_trips() -> None:
    x = np.array(
        [[[1.0, 10.0], [3.0, np.nan]], [[np.nan, np.nan], [5.0, 10.0]]], dtype=np.float32
    )  # feature 0: 1, 3, 5; feature 1: 10, 10 (constant)
    scaler = ParcelFeatureScaler().fit(x)
    np.testing.assert_allclose(scaler.mean, [3.0, 10.0])
    np.testing.assert_allclose(scaler.std, [np.sqrt(8 / 3), 1e-6])
    scaled = scaler.apply(x)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(scaled), np.isnan(x))
    np.testing.assert_allclose(scaled[0, 0, 0], -2 / np.sqrt(8 / 3), rtol=1e-6)
    assert scaled[1, 1, 1] == 0.0
    stored = scaler.to_dict()
    assert all(isinstance(v, float) for v in stored["mean"] + stored["std"])
    back = ParcelFeatureScaler.from_dict(stored)
    np.testing.assert_array_equal(back.apply(x), scaled)
    with pytest.raises(ValueError, match="no finite value"):
        ParcelFeatureScaler().fit(np.full((2, 2, 1), np.nan))
    with pytest.raises(ValueError, match="3 features"):
        scaler.apply(np.zeros((1, 2, 3)))


# --------------------------------------------------------------------------- fitting
def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separable series: the class shifts every feature of every step by +-2; some steps missing."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.float32)
    x = rng.normal(0.0, 0.3, (n, 6, 4)).astype(np.float32) + (4 * y - 2)[:, None, None]
    x[rng.random((n, 6)) < 0.2] = np.nan
    weight = np.ones(n, dtype=np.float32)
    weight[:4] = 0.0  # "not declared": ignored
    return x, y, weight


def _fit(name: str, out_dir: Path, max_epochs: int = 15, **kwargs: object) -> tuple[torch.nn.Module, History]:
    torch.manual_seed(0)
    model = create_model(name, n_features=4, **kwargs)
    x, y, w = _toy(64, 0)
    xv, yv, wv = _toy(32, 1)
    result = fit_parcel_classifier(
        model, x, y, w, xv, yv, wv, out_dir=out_dir, batch_size=16, lr=1e-2, max_epochs=max_epochs,
        patience=3, seed=0, num_threads=1,
    )  # fmt: skip
    return model, result


def test_fit_learns_a_separable_problem_deterministically(tmp_path: Path) -> None:
    model, result = _fit("tempcnn", tmp_path / "a", n_steps=6, hidden=8, kernel_size=3)
    assert result.best_row["val_mcc"] == 1.0
    assert list(result.epochs[0])[:4] == ["epoch", "train_loss", "val_loss", "val_mcc"]
    assert result.stop_reason in ("early_stopping", "max_epochs")
    assert 1 <= result.best_epoch <= len(result.epochs)
    assert result.best_row["val_loss"] == min(row["val_loss"] for row in result.epochs)
    again, second = _fit("tempcnn", tmp_path / "b", n_steps=6, hidden=8, kernel_size=3)
    assert [row["val_loss"] for row in second.epochs] == [row["val_loss"] for row in result.epochs]
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the best state is restored: its validation loss is the best epoch's
    xv, yv, wv = _toy(32, 1)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(xv))[:, 0]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(yv), weight=torch.from_numpy(wv), reduction="sum"
    ) / float(wv.sum())
    assert float(loss) == pytest.approx(result.best_row["val_loss"], rel=1e-5)
    # the shared checkpoint format: the trainer's keys, the parcel model rebuilt from best.pt
    checkpoint = load_checkpoint(tmp_path / "a" / "best.pt")
    assert checkpoint["model_name"] == "tempcnn" and checkpoint["best_epoch"] == result.best_epoch
    assert (tmp_path / "a" / "metrics.csv").read_text().count("\n") == len(result.epochs) + 1


def test_parcel_fit_resumes_exactly(tmp_path: Path) -> None:
    """Parcel classifiers train in the one torch loop: 6 epochs straight equal 3 + a resume of 3."""
    x, y, w = _toy(64, 0)
    xv, yv, wv = _toy(32, 1)
    doy = np.arange(6) * 30
    config = parcel_trainer_config(batch_size=16, lr=1e-2, max_epochs=6, patience=50, seed=0, num_threads=1)
    loaders = parcel_loaders(x, y, w, xv, yv, wv, batch_size=16, seed=0, doy_train=doy, doy_val=doy)
    straight = Trainer.build("transformer", {"n_features": 4}, config, tmp_path / "straight").fit(*loaders)
    short = config.model_copy(update={"max_epochs": 3})
    Trainer.build("transformer", {"n_features": 4}, short, tmp_path / "split").fit(*loaders)
    resumed = Trainer.resume(tmp_path / "split" / "last.pt", config=config).fit(*loaders)
    assert [r["val_loss"] for r in resumed.epochs] == [r["val_loss"] for r in straight.epochs]
    assert len(straight.epochs) == 6


def test_parcel_batches_pass_doy_and_reshuffle_per_epoch() -> None:
    x, y, w = _toy(9, 0)
    batches = ParcelBatches(x, y, w, np.arange(6), batch_size=4, shuffle=True, seed=3)
    first = [b["y"][:, 0].tolist() for b in batches]
    assert [len(b) for b in first] == [4, 5]  # the trailing single parcel joins the last batch
    assert sorted(v for batch in first for v in batch) == sorted(y.tolist())  # every parcel once
    item = next(iter(batches))
    assert item["x"].shape == (4, 6, 4) and item["doy"].shape == (4, 6) and item["doy"].dtype == torch.int64
    batches.set_epoch(1)
    assert [b["y"][:, 0].tolist() for b in batches] != first
    batches.set_epoch(0)
    assert [b["y"][:, 0].tolist() for b in batches] == first


def test_fit_refuses_unlabelled_parcels(tmp_path: Path) -> None:
    x, y, w = _toy(8, 0)
    with pytest.raises(ValueError, match="weight > 0"):
        fit_parcel_classifier(
            create_model("lstm-parcel", n_features=4), x, y, w, x, y, 0 * w, out_dir=tmp_path,
            batch_size=4, lr=1e-3, max_epochs=1, patience=1, seed=0,
        )  # fmt: skip


# --------------------------------------------------------------------------- classifier task
def test_classifier_task_writes_one_probability_per_parcel(region: Path) -> None:
    patch = EOPatch.load(str(region / "eopatches" / "box-000"))
    patch = ZonalStatisticsTask().execute(ValidMaskTask().execute(ReflectanceTask().execute(patch)))
    x, doy, table = parcel_series(patch, "frames")
    torch.manual_seed(0)
    model = create_model("transformer")
    scaler = ParcelFeatureScaler().fit(x)
    out = ParcelClassifierTask(model, scaler, "frames").execute(patch)
    proba = out[PARCEL_STATS]["proba"].to_numpy()
    assert len(proba) == len(table) > 10 and np.isfinite(proba).all()
    assert ((proba >= 0) & (proba <= 1)).all() and proba.std() > 0
    from s2agri.models.parcel import predict_proba

    np.testing.assert_allclose(proba, predict_proba(model, scaler.apply(x), doy=doy), rtol=1e-6)
    monthly = ParcelClassifierTask(TempCNN().eval(), ParcelFeatureScaler().fit(x), "monthly").execute(patch)
    months = monthly[PARCEL_STATS]["proba"].to_numpy()
    observed = ~np.isnan(parcel_series(patch, "monthly")[0]).any(-1).all(-1)
    np.testing.assert_array_equal(np.isfinite(months), observed)  # never observed: no prediction


def test_model_kwargs_and_config_errors(region: Path, tmp_path: Path) -> None:
    config = MappingConfig.model_validate({"train": {"model": "tempcnn", "params": {"hidden": 8}}})
    assert parcel_model_kwargs(config, 24) == {"n_features": 24, "n_steps": 6, "hidden": 8}
    paper = MappingConfig.model_validate({"train": {"model": "transformer", "preset": "paper"}})
    assert parcel_model_kwargs(paper, 24)["dim_feedforward"] == 1024
    with pytest.raises(ValidationError, match="kernel are not arguments of lstm-parcel"):
        MappingConfig.model_validate({"train": {"model": "lstm-parcel", "params": {"kernel": 3}}})
    boxes = [region / "eopatches" / "box-000"]
    with pytest.raises(S2AgriInputError, match="needs at least 2 training boxes"):
        train_parcel_model(boxes, MappingConfig.model_validate({"train": {"model": "tempcnn"}}), tmp_path)


def test_training_is_reproducible(region: Path, tmp_path: Path) -> None:
    config = MappingConfig.model_validate(
        {
            "train": {"model": "lstm-parcel", "params": {"hidden": 8, "fc": 8}, "seed": 3},
            "parcel": {"max_epochs": 2},
            "deep": {"trainer": {"num_threads": 1}},
        }
    )
    boxes = [region / "eopatches" / name for name in ("box-000", "box-001", "box-002")]
    states = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        card = train_parcel_model(boxes, config, tmp_path / name)
        states.append(torch.load(tmp_path / name / "model.pt", weights_only=True)["model_state"])
    assert card["epochs"] == 2 and len(card["validation_boxes"]) == 1 and len(card["training_boxes"]) == 2
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    rows = [(tmp_path / name / "training" / "metrics.csv").read_text().splitlines() for name in ("a", "b")]
    assert [row.split(",")[:4] for row in rows[0]] == [row.split(",")[:4] for row in rows[1]]


# --------------------------------------------------------------------------- CLI
def test_train_resume_continues_a_parcel_run(region: Path, tmp_path: Path) -> None:
    """--resume continues a published parcel model's epochs (the one training loop's checkpoints):
    2 epochs then 1 more equal 3 epochs straight."""
    boxes = _boxes(region, "box-000", "box-001")

    def config(name: str, epochs: int) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"train: {{model: transformer}}\nparcel: {{max_epochs: {epochs}, patience: 50}}\n"
            "deep:\n  trainer: {num_threads: 1}\n"
        )
        return str(path)

    straight, out = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(["train", *boxes, "--out", str(straight), "--config", config("three", 3)]) == 0
    assert cli.main(["train", *boxes, "--out", str(out), "--config", config("two", 2)]) == 0
    assert cli.main(["train", *boxes, "--out", str(out), "--config", config("more", 3), "--resume"]) == 0
    first, second = (json.loads((m / "model_card.json").read_text()) for m in (straight, out))
    assert second["epochs"] == 3 and second["learning_curve"] == first["learning_curve"]
    weights = [torch.load(m / "model.pt", weights_only=True)["model_state"] for m in (straight, out)]
    for key, value in weights[0].items():
        assert torch.allclose(value, weights[1][key], atol=1e-6, rtol=0), key


def test_train_tempcnn_card_and_checkpoint(tempcnn_model: Path) -> None:
    card = json.loads((tempcnn_model / "model_card.json").read_text())
    expected = TempCNN(n_features=24, n_steps=6).n_parameters
    assert card["model"] == "tempcnn" and card["file"] == "model.pt" and card["n_parameters"] == expected
    assert 1 <= card["epochs"] <= 3 and card["stop_reason"] in ("early_stopping", "max_epochs")
    assert len(card["training_boxes"]) == 1 and len(card["validation_boxes"]) == 1
    assert card["parcels"]["train"] > 10 and card["parcels"]["validation"] > 10
    assert card["serialized_bytes"] > 4 * expected and card["inference_seconds_per_box"] > 0
    assert set(card["validation"]) == {"val_loss", "val_mcc"}
    assert set(card["validation_box_scores"]) >= {"weighted_mcc", "mcc_mask", "f1_mask", "acc_full"}
    rows = (tempcnn_model / "training" / "metrics.csv").read_text().splitlines()
    # the one training loop's metrics.csv and checkpoints (last.pt, best.pt = model.pt)
    assert rows[0] == ",".join(CSV_COLUMNS) and len(rows) == card["epochs"] + 1
    assert {"last.pt", "best.pt"} <= {p.name for p in (tempcnn_model / "training").iterdir()}
    checkpoint = torch.load(tempcnn_model / "model.pt", weights_only=True)
    assert set(checkpoint) >= set(TRAINER_CHECKPOINT_KEYS)
    assert checkpoint["epoch"] == checkpoint["best_epoch"] == card["best_epoch"]
    assert [row["epoch"] for row in card["learning_curve"]] == list(range(1, card["epochs"] + 1))
    assert checkpoint["steps"] == "monthly" and checkpoint["months"] == [3, 4, 5, 6, 7, 8]
    assert checkpoint["mapping_config"]["parcel"]["max_epochs"] == 3
    trained = load_trained(tempcnn_model)
    assert trained.is_parcel and not trained.is_deep and trained.parcel["buffer_m"] == 0.0
    assert trained.parcel["scaler"].n_features == 24


def test_predict_with_tempcnn_paints_parcels_and_exports_statistics(
    region: Path, tempcnn_model: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    box = region / "eopatches" / "box-002"
    assert cli.main(["predict", str(box), "--model", str(tempcnn_model), "--out", str(run)]) == 0
    assert "parcel_stats.gpkg" in capsys.readouterr().out
    patch = EOPatch.load(str(run / "eopatches" / "box-002"))
    source = EOPatch.load(str(box))
    height, width = source[contract.BANDS].shape[1:3]
    assert patch[PRED_PROBA].shape == (4 * height, 4 * width, 1)
    assert patch.meta_info[PRED_MODEL_KEY] == "tempcnn"
    parcels = source[contract.REFERENCE]
    inside = parcel_index_map(
        parcels, source.bbox, (4 * height, 4 * width), buffer=contract.REFERENCE_BUFFER_M
    )
    painted = patch[PRED_CULTIVATED][..., 0]
    assert not painted[inside < 0].any() and (patch[PRED_PROBA][..., 0][inside < 0] == 0).all()
    stats = gpd.read_file(run / "parcel_stats.gpkg", layer="parcel_stats")
    table = patch[PARCEL_STATS]
    assert len(stats) == len(table) and stats.crs == source.bbox.crs.pyproj_crs()
    assert {"box", "id", "B04m05", "B04s05", "proba", "pred"} <= set(stats.columns)
    np.testing.assert_allclose(stats["proba"], table["proba"], rtol=1e-6)
    np.testing.assert_array_equal(stats["pred"], (stats["proba"] >= 0.5).astype(int))
    assert cli.main(["evaluate", str(run)]) == 0


def test_transformer_with_frames_trains_and_predicts(region: Path, tmp_path: Path) -> None:
    config = tmp_path / "frames.yaml"
    config.write_text(FRAMES_CONFIG)
    model = tmp_path / "transformer"
    args = ["train", *_boxes(region, "box-000", "box-001"), "--model", "transformer"]
    assert cli.main([*args, "--out", str(model), "--config", str(config)]) == 0
    card = json.loads((model / "model_card.json").read_text())
    assert card["steps"] == "frames" and card["n_steps"] == 8 and card["epochs"] <= 2
    run = tmp_path / "run"
    assert cli.main(["predict", *_boxes(region, "box-002"), "--model", str(model), "--out", str(run)]) == 0
    patch = EOPatch.load(str(run / "eopatches" / "box-002"))
    assert patch.meta_info[PRED_MODEL_KEY] == "transformer" and patch[PRED_PROBA].shape == (160, 160, 1)


def test_tempcnn_with_frames_is_refused(region: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "frames.yaml"
    config.write_text(FRAMES_CONFIG)
    args = ["train", *_boxes(region, "box-000", "box-001"), "--model", "tempcnn", "--config", str(config)]
    assert cli.main([*args, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "tempcnn needs fixed-length monthly steps" in err and len(err.splitlines()) == 1


def test_box_without_reference_is_refused(region: Path, tempcnn_model: Path, tmp_path: Path, capsys) -> None:
    bare = tmp_path / "bare"
    patch = EOPatch.load(str(region / "eopatches" / "box-002"))
    del patch[contract.REFERENCE]
    patch.save(str(bare))
    out = tmp_path / "run"
    assert cli.main(["predict", str(bare), "--model", str(tempcnn_model), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bare" in err and "REFERENCE" in err and len(err.splitlines()) == 1 and not out.exists()
    boxes = [*_boxes(region, "box-000"), str(bare)]
    assert cli.main(["train", *boxes, "--model", "tempcnn", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bare" in err and "REFERENCE" in err and len(err.splitlines()) == 1

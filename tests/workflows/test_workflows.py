"""The per-box mapping workflows and their commands: train, predict, evaluate, export, demo."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from eolearn.core import EOPatch, FeatureType

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.metrics import box_scores
from s2agri.tasks.prediction import (
    INPUT_KEY,
    INPUT_RELATIVE_KEY,
    PRED_CULTIVATED,
    PRED_MODEL_KEY,
    PRED_PROBA,
)
from s2agri.tasks.vectorise import PARCELS_PRED
from s2agri.workflows import cli
from s2agri.workflows.mapping import box_seed_id
from s2agri.workflows.runs import find_boxes, preflight, staged_folder
from s2agri.workflows.simulate import simulate_region

SIZE = 40
FAST_CONFIG = """
train:
  params: {n_estimators: 20, num_leaves: 15, n_jobs: 1}
  samples_per_box: 4000
"""


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four simulated 40 x 40 px boxes (seed 0); box-003 is held out."""
    out = tmp_path_factory.mktemp("region") / "data"
    simulate_region(out, boxes=4, size=SIZE, seed=0, frames_min=8, frames_max=12)
    return out


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "fast.yaml"
    path.write_text(FAST_CONFIG)
    return path


@pytest.fixture(scope="module")
def model(region: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "lightgbm"
    boxes = [str(region / "eopatches" / f"box-00{i}") for i in range(3)]
    assert cli.main(["train", *boxes, "--out", str(out), "--config", str(config_file)]) == 0
    return out


@pytest.fixture(scope="module")
def run(region: Path, model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert (
        cli.main(["predict", str(region / "eopatches" / "box-003"), "--model", str(model), "--out", str(out)])
        == 0
    )
    return out


# --- boxes and run folders -------------------------------------------------------------------------


def test_find_boxes_accepts_patches_folders_and_simulate_output(region: Path) -> None:
    eopatches = region / "eopatches"
    names = [f"box-00{i}" for i in range(4)]
    assert [b.name for b in find_boxes([region])] == names
    assert [b.name for b in find_boxes([eopatches])] == names
    assert [b.name for b in find_boxes([eopatches / "box-002", eopatches / "box-000"])] == [
        "box-002",
        "box-000",
    ]


def test_find_boxes_errors(region: Path, tmp_path: Path) -> None:
    with pytest.raises(S2AgriInputError, match="does not exist"):
        find_boxes([tmp_path / "nope"])
    with pytest.raises(S2AgriInputError, match="neither an EOPatch"):
        find_boxes([tmp_path])
    with pytest.raises(S2AgriInputError, match="box-001 appear more than once"):
        find_boxes([region / "eopatches" / "box-001", region])


def test_preflight_names_box_and_missing_feature(write_eopatch) -> None:
    box = write_eopatch("box-x", reference=False)
    preflight([box], [contract.BANDS, contract.CLM])
    with pytest.raises(S2AgriInputError, match=r"box-x lacks mask_timeless/CULTIVATED"):
        preflight([box], [contract.BANDS, contract.CULTIVATED])


def test_staged_folder_publishes_or_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_folder(out) as staging:
        (staging / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(out) as staging:
        (staging / "done.txt").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "done.txt").read_text() == "x"


def test_box_seed_id_is_stable_int32() -> None:
    assert box_seed_id("box-000") == box_seed_id("box-000") != box_seed_id("box-001")
    assert 0 <= box_seed_id("x" * 100) < 2**31


# --- train -----------------------------------------------------------------------------------------


def test_train_writes_model_and_card(model: Path) -> None:
    card = json.loads((model / "model_card.json").read_text())
    assert card["model"] == "lightgbm" and (model / card["file"]).is_file()
    assert card["training_boxes"] == ["box-000", "box-001", "box-002"]
    assert card["samples"]["total"] == card["samples"]["cultivated"] + card["samples"]["not_cultivated"]
    assert 0 < card["samples"]["total"] <= 3 * 4000
    # the default seasonal features: 6 windows x (12 bands + 4 indices), 4 x 3 percentiles, the
    # count of valid observations, and 6 x 4 x 2 neighbourhood statistics
    assert len(card["feature_names"]) == 6 * 16 + 12 + 1 + 48 and card["feature_names"][0] == "w0_B01"
    assert card["config"]["features"]["kind"] == "seasonal"
    selection = card["threshold_selection"]
    assert selection["validation_boxes"] == ["box-001"]  # one of three boxes, the middle one
    assert 0.2 <= card["threshold"] <= 0.8
    assert -1 <= selection["weighted_mcc_at_0.5"] <= selection["weighted_mcc"] <= 1
    assert card["n_parameters"] > 0 and card["serialized_bytes"] == (model / card["file"]).stat().st_size
    assert card["config"]["train"]["params"]["n_estimators"] == 20
    assert json.loads((model / "config.json").read_text())["train"]["samples_per_box"] == 4000
    assert list((model / "report").glob("*/report.html"))
    assert not (model / ".samples").exists()


def test_train_rejects_boxes_without_reference(write_eopatch, tmp_path: Path, capsys) -> None:
    box = write_eopatch("box-noref", reference=False)
    assert cli.main(["train", str(box), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("s2agri: error: box-noref lacks mask_timeless/CULTIVATED") and "\n" not in err
    assert not (tmp_path / "m").exists()


def test_train_rejects_unknown_model_params(region: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train: {params: {n_trees: 5}, samples_per_box: 1000}\n")
    code = cli.main(
        [
            "train",
            str(region / "eopatches" / "box-000"),
            "--out",
            str(tmp_path / "m"),
            "--config",
            str(config),
        ]
    )
    assert code == 2
    assert "train.params do not fit model lightgbm" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.tmp-*"))


# --- predict ---------------------------------------------------------------------------------------


def test_predict_run_products(run: Path, region: Path) -> None:
    patch = EOPatch.load(str(run / "eopatches" / "box-003"))
    proba, mask = patch[PRED_PROBA], patch[PRED_CULTIVATED]
    assert proba.shape == (4 * SIZE, 4 * SIZE, 1) and proba.dtype == np.float32
    assert mask.shape == proba.shape and mask.dtype == bool
    assert proba.min() >= 0.0 and proba.max() <= 1.0
    # the threshold the model chose on its validation box, recorded in the card and the EOPatch
    threshold = json.loads((run / "model_card.json").read_text())["threshold"]
    assert patch.meta_info["PRED_THRESHOLD"] == threshold
    assert json.loads((run / "config.json").read_text())["predict"]["threshold"] == threshold
    np.testing.assert_array_equal(mask, proba >= np.float32(threshold))
    assert patch.meta_info[PRED_MODEL_KEY] == "lightgbm" and patch.meta_info["box_id"] == "box-003"
    assert Path(patch.meta_info[INPUT_KEY]) == (region / "eopatches" / "box-003").resolve()
    assert contract.CULTIVATED in patch and contract.BANDS not in patch  # reference kept, inputs not copied
    # submission raster: the mask, uint8, on the bbox grid
    with rasterio.open(run / "submission" / "box-003.tif") as src:
        assert src.dtypes == ("uint8",) and src.crs.to_epsg() == 32633 and src.res == (2.5, 2.5)
        assert (src.bounds.left, src.bounds.top) == (patch.bbox.min_x, patch.bbox.max_y)
        np.testing.assert_array_equal(src.read(1), mask[..., 0].astype(np.uint8))
    with rasterio.open(run / "proba" / "box-003_proba.tif") as src:
        assert np.abs(src.read(1) / 254.0 - proba[..., 0]).max() <= 0.5 / 254 + 1e-6
    # parcels: every geometry valid, EPSG:32633, the same rows as the EOPatch feature
    parcels = gpd.read_file(run / "parcels.gpkg", layer="parcels")
    assert parcels.crs.to_epsg() == 32633 and shapely.is_valid(parcels.geometry.values).all()
    assert len(parcels) == len(patch[PARCELS_PRED])
    assert set(parcels["box_id"]) <= {"box-003"} and set(parcels["model"]) <= {"lightgbm"}
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["model"] == "lightgbm" and run_info["failures"] == {} and run_info["boxes"] == ["box-003"]
    assert (run / run_info["report"]).is_file()
    assert json.loads((run / "model_card.json").read_text())["model"] == "lightgbm"
    assert not (run / "failed.json").exists()


def test_predict_uses_the_features_the_model_was_trained_with(region: Path, tmp_path: Path) -> None:
    """A model trained on 5x5 statistics (pooled) predicted without --config computes pooled 5x5
    statistics again, not the default seasonal features (that silently scored 0.086 before)."""
    config = tmp_path / "pooled.yaml"
    config.write_text(FAST_CONFIG + "features: {mode: pooled}\n")
    model = tmp_path / "pooled-model"
    boxes = [str(region / "eopatches" / f"box-00{i}") for i in range(3)]
    assert cli.main(["train", *boxes, "--out", str(model), "--config", str(config)]) == 0
    assert json.loads((model / "model_card.json").read_text())["feature_names"][0] == "B01_min"
    out = tmp_path / "run"
    assert (
        cli.main(["predict", str(region / "eopatches" / "box-003"), "--model", str(model), "--out", str(out)])
        == 0
    )
    used = json.loads((out / "config.json").read_text())["features"]
    assert used["kind"] == "stats5x5" and used["mode"] == "pooled"


def test_predict_refuses_a_config_whose_features_differ_from_the_model(
    region: Path, model: Path, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "other.yaml"
    config.write_text("features: {kind: stats5x5}\n")
    out = tmp_path / "run"
    code = cli.main(
        [
            "predict",
            str(region / "eopatches" / "box-003"),
            "--model",
            str(model),
            "--out",
            str(out),
            "--config",
            str(config),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not out.exists()
    assert (
        "--config features is {'kind': 'stats5x5'" in err
        and "was trained with features {'kind': 'seasonal'" in err
    )


def test_predict_with_rule_needs_no_model_file(region: Path, tmp_path: Path) -> None:
    out = tmp_path / "rule"
    assert cli.main(["predict", str(region), "--model", "ndvi-rule", "--out", str(out)]) == 0
    patch = EOPatch.load(str(out / "eopatches" / "box-001"))
    assert patch.meta_info[PRED_MODEL_KEY] == "ndvi-rule"
    assert set(np.unique(patch[PRED_PROBA])) <= {0.0, 1.0}


def test_predict_refuses_bad_model_and_existing_out(region: Path, run: Path, tmp_path: Path, capsys) -> None:
    box = str(region / "eopatches" / "box-003")
    assert cli.main(["predict", box, "--model", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no model_card.json there" in capsys.readouterr().err
    assert cli.main(["predict", box, "--model", "ndvi-rule", "--out", str(run)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def _copy_box(src: Path, dst: Path, edit) -> Path:
    patch = EOPatch.load(str(src))
    edit(patch)
    patch.save(str(dst))
    return dst


def test_failing_boxes_leave_nothing_and_are_listed(
    region: Path, model: Path, tmp_path: Path, capsys
) -> None:
    boxes = tmp_path / "boxes"
    src = region / "eopatches"

    def cloudy(patch: EOPatch) -> None:
        patch[contract.CLM] = np.ones_like(patch[contract.CLM])

    def nan_bands(patch: EOPatch) -> None:
        bands = patch[contract.BANDS].astype(np.float32)
        bands[0, 0, 0, 0] = np.nan
        patch[contract.BANDS] = bands

    _copy_box(src / "box-000", boxes / "box-cloudy", cloudy)
    _copy_box(src / "box-001", boxes / "box-nan", nan_bands)
    _copy_box(src / "box-002", boxes / "box-good", lambda patch: None)
    config = tmp_path / "c.yaml"
    config.write_text(FAST_CONFIG + "masks: {min_valid_fraction: 0.5}\n")
    filtered_model = tmp_path / "model"  # the frame filter belongs to the model's inputs
    train_boxes = [str(src / f"box-00{i}") for i in range(3)]
    assert cli.main(["train", *train_boxes, "--out", str(filtered_model), "--config", str(config)]) == 0
    out = tmp_path / "run"
    code = cli.main(["predict", str(boxes), "--model", str(filtered_model), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 of 3 boxes failed" in err
    failed = json.loads((out / "failed.json").read_text())
    assert set(failed) == {"box-cloudy", "box-nan"}
    assert "no frame has >= 50.0% valid pixels" in failed["box-cloudy"]
    assert "NaN" in failed["box-nan"]
    assert sorted(p.name for p in (out / "eopatches").iterdir()) == ["box-good"]
    assert sorted(p.name for p in (out / "submission").iterdir()) == ["box-good.tif"]
    assert sorted(p.name for p in (out / "proba").iterdir()) == ["box-good_proba.tif"]
    assert set(gpd.read_file(out / "parcels.gpkg")["box_id"]) <= {"box-good"}


def test_predict_missing_feature_is_one_line_and_writes_nothing(
    write_eopatch, tmp_path: Path, capsys
) -> None:
    box = write_eopatch("box-noclm")
    patch = EOPatch.load(str(box))
    del patch[contract.CLM]
    patch.save(str(box), overwrite_permission=2)
    out = tmp_path / "run"
    assert cli.main(["predict", str(box), "--model", "ndvi-rule", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2agri: error: box-noclm lacks mask/CLM") and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".run.tmp-*"))


# --- evaluate and export ---------------------------------------------------------------------------


def test_evaluate_matches_hand_scores(run: Path, capsys) -> None:
    assert cli.main(["evaluate", str(run), "--quicklooks"]) == 0
    out = capsys.readouterr().out
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["box"] for r in rows] == ["box-003", "pooled"] and rows[0]["model"] == "lightgbm"
    patch = EOPatch.load(str(run / "eopatches" / "box-003"))
    expected = box_scores(
        patch[contract.CULTIVATED][..., 0],
        patch[PRED_CULTIVATED][..., 0],
        patch[contract.NOT_DECLARED][..., 0],
    )
    for key, value in expected.items():
        assert rows[0][key] == pytest.approx(value, nan_ok=True)
        assert rows[1][key] == pytest.approx(value, nan_ok=True)  # one box: pooled == box
    assert "lightgbm        box-003" in out and "box mean" in out
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("model,box,weighted_mcc")
    assert (run / "quicklooks" / "box-003.png").stat().st_size > 1000


def test_evaluate_names_two_runs_of_one_model_by_their_folders(run: Path, tmp_path: Path) -> None:
    import shutil

    again = tmp_path / "run-again"
    shutil.copytree(run, again)
    out = tmp_path / "compare"
    assert cli.main(["evaluate", str(run), str(again), "--out", str(out)]) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert {r["model"] for r in rows} == {"lightgbm (run)", "lightgbm (run-again)"}
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert set(summary) == {"lightgbm (run)", "lightgbm (run-again)"}


def test_evaluate_needs_out_for_several_runs(run: Path, capsys) -> None:
    assert cli.main(["evaluate", str(run), str(run)]) == 2
    assert "add --out DIR" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["p.gpkg", "p.geojson", "p.fgb", "p.parquet", "p.shp"])
def test_export_formats_round_trip(run: Path, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert cli.main(["export", str(run), "--parcels", str(path)]) == 0
    expected = gpd.read_file(run / "parcels.gpkg", layer="parcels")
    got = gpd.read_parquet(path) if name.endswith(".parquet") else gpd.read_file(path)
    if name.endswith(".geojson"):  # RFC 7946: WGS84 longitude / latitude
        assert got.crs.to_epsg() == 4326 and got.total_bounds[0] > 10 and got.total_bounds[1] > 40
        got = got.to_crs(32633)
    assert len(got) == len(expected) and got.crs.to_epsg() == 32633
    # RFC 7946 GeoJSON keeps 7 decimals of degrees (about 1 cm)
    assert np.allclose(got.area.sum(), expected.area.sum(), rtol=1e-4 if name.endswith(".geojson") else 1e-9)
    if name.endswith(".shp"):  # dBASE names: at most 10 characters, none truncated blindly
        assert "perim_m" in got.columns and np.allclose(got["perim_m"], expected["perimeter_m"])
    if name.endswith(".gpkg"):
        import sqlite3

        with sqlite3.connect(path) as db:  # GeoPackage 1.2: application_id GPKG, user_version 10200
            assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if not name.endswith((".parquet", ".shp")):  # a Shapefile's layer is its file name
        import pyogrio

        assert pyogrio.list_layers(path)[:, 0].tolist() == ["parcels"]  # not the temporary file's name


def test_export_rasters_and_bad_requests(run: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["export", str(run), "--submission", str(tmp_path / "s")]) == 0
    with (
        rasterio.open(tmp_path / "s" / "box-003.tif") as exported,
        rasterio.open(run / "submission" / "box-003.tif") as original,
    ):
        np.testing.assert_array_equal(exported.read(1), original.read(1))
    assert cli.main(["export", str(run)]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--parcels", str(tmp_path / "p.kml")]) == 2
    assert "unknown vector format '.kml'" in capsys.readouterr().err


# --- demo ------------------------------------------------------------------------------------------


def test_demo_writes_everything(tmp_path: Path, config_file: Path, capsys) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--size", "64", "--train-boxes", "2", "--test-boxes", "1"]
    assert cli.main([*args, "--config", str(config_file)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "metrics.json").read_text())
    assert {(r["model"], r["box"]) for r in rows} == {
        ("lightgbm", "box-002"),
        ("lightgbm", "pooled"),
        ("ndvi-rule", "box-002"),
        ("ndvi-rule", "pooled"),
    }
    assert set(rows[0]) == {
        "model", "box", "weighted_mcc", "mcc_full", "mcc_mask", "f1_full", "f1_mask", "acc_full", "acc_mask",
        "object_precision", "object_recall", "object_f1", "median_iou", "over_segmentation",
        "under_segmentation", "n_reference", "n_predicted",
    }  # fmt: skip
    parcels = gpd.read_file(out / "parcels.gpkg", layer="parcels")
    lightgbm = next(r for r in rows if r["model"] == "lightgbm" and r["box"] == "box-002")
    # every parcel of at least 0.1 ha is a predicted object (none lies in not-declared land here)
    assert lightgbm["n_predicted"] <= len(parcels)
    assert 0 <= lightgbm["object_f1"] <= 1 and lightgbm["n_reference"] > 0
    patch = EOPatch.load(str(out / "eopatches" / "box-002"))
    assert patch.meta_info[PRED_MODEL_KEY] == "lightgbm" and PARCELS_PRED in patch
    assert patch[PRED_PROBA].shape == (256, 256, 1)
    assert gpd.read_file(out / "parcels.gpkg", layer="parcels").crs.to_epsg() == 32633
    for path in ("submission/box-002.tif", "quicklooks/box-002.png", "models/lightgbm/model_card.json"):
        assert (out / path).is_file(), path
    assert "lightgbm" in printed and "ndvi-rule" in printed and str(out / "metrics.json") in printed
    # the input path relative to the run survived the rename of the demo folder, for the rule run too
    assert (out / patch.meta_info[INPUT_RELATIVE_KEY]).resolve() == (out / "data/eopatches/box-002").resolve()
    assert cli.main(["evaluate", str(out / "baselines" / "ndvi-rule"), "--quicklooks"]) == 0
    assert (out / "baselines" / "ndvi-rule" / "quicklooks" / "box-002.png").is_file()
    assert FeatureType.DATA not in {ftype for ftype, _ in patch.get_features()}


def test_box_without_parcels(region: Path, run: Path, tmp_path: Path, capsys) -> None:
    """No cultivated pixel: training refuses (one class), scoring follows scikit-learn (MCC, F1 = 0)."""

    def no_parcels(patch: EOPatch) -> None:
        patch[contract.CULTIVATED] = np.zeros_like(patch[contract.CULTIVATED])
        patch[contract.NOT_DECLARED] = np.zeros_like(patch[contract.NOT_DECLARED])

    box = _copy_box(region / "eopatches" / "box-000", tmp_path / "boxes" / "box-empty", no_parcels)
    assert cli.main(["train", str(box), "--out", str(tmp_path / "m")]) == 2
    assert "0 cultivated labelled pixels: add boxes with both classes" in capsys.readouterr().err
    out = tmp_path / "run"
    assert cli.main(["predict", str(box), "--model", "ndvi-rule", "--out", str(out)]) == 0
    assert cli.main(["evaluate", str(out)]) == 0
    row = json.loads((out / "metrics.json").read_text())[0]
    predicted = EOPatch.load(str(out / "eopatches" / "box-empty"))[PRED_CULTIVATED]
    assert row["mcc_full"] == row["weighted_mcc"] == row["f1_full"] == 0.0
    assert row["acc_full"] == pytest.approx(1.0 - predicted.mean())

"""Deep segmenters in the per-box workflow: train --model gcnn, the prediction task, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from eolearn.core import EOPatch

from s2agri.models.inference import TTA_TRANSFORMS, predict_tiled
from s2agri.models.registry import create_model
from s2agri.models.trainer_config import THRESHOLDS
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask
from s2agri.tasks.predict_deep import DeepModelPredictTask, model_input
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_MODEL_KEY, PRED_PROBA
from s2agri.tasks.tensors import PercentileNormaliser
from s2agri.workflows import cli
from s2agri.workflows.config import MappingConfig
from s2agri.workflows.mapping import deep_prediction_tasks
from s2agri.workflows.model_store import TrainedModel, load_trained
from s2agri.workflows.simulate import simulate_region
from s2agri.workflows.train_deep import frames_for, model_kwargs

CONFIG = """
train: {model: gcnn}
deep:
  patch_size: 80
  samples_per_epoch: 16
  trainer: {max_epochs: 2, batch_size: 8, num_threads: 1}
  tile: 24
"""


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deep") / "data"
    simulate_region(out, boxes=3, size=40, seed=0, frames_min=6, frames_max=8)
    return out


def _normaliser(n_channels: int = 12) -> PercentileNormaliser:
    return PercentileNormaliser(low=[0.0] * n_channels, high=[0.5] * n_channels)


def test_model_input_selects_normalises_masks_and_pads() -> None:
    rng = np.random.default_rng(0)
    reflectance = rng.uniform(0, 1, (3, 4, 5, 12)).astype(np.float32)
    valid = np.ones((3, 4, 5, 1), bool)
    valid[1] = False  # the cloudiest frame
    valid[2, 0, 0] = False
    x = model_input(reflectance, valid, _normaliser(), n_frames=2)  # the 2 least cloudy, time order
    assert x.shape == (2, 12, 4, 5) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], np.clip(reflectance[0] / 0.5, 0, 1).transpose(2, 0, 1))
    assert (x[1, :, 0, 0] == 0).all()
    np.testing.assert_allclose(x[1, :, 1, 1], np.clip(reflectance[2, 1, 1] / 0.5, 0, 1))
    padded = model_input(reflectance, valid, _normaliser(), n_frames=5)  # all 3 frames, then 2 empty
    assert padded.shape == (5, 12, 4, 5) and (padded[1] == 0).all() and (padded[3:] == 0).all()
    assert model_input(reflectance, valid, _normaliser(), None).shape == (3, 12, 4, 5)


def test_deep_predict_task_equals_whole_box_inference(region: Path) -> None:
    torch.manual_seed(0)
    model = create_model("gcnn").eval()
    patch = EOPatch.load(str(region / "eopatches" / "box-000"))
    patch = ValidMaskTask().execute(ReflectanceTask().execute(patch))
    task = DeepModelPredictTask(model, _normaliser(), None, 0.5, tile=16)
    out = task.execute(patch)
    x = model_input(
        patch[(contract.BANDS[0], "REFLECTANCE")], patch[(contract.CLM[0], "VALID")], _normaliser(), None
    )
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.from_numpy(x)[None]))[0, 0].numpy()
    proba = out[PRED_PROBA][..., 0]
    assert proba.shape == (160, 160)
    np.testing.assert_allclose(proba, whole, atol=1e-5)
    np.testing.assert_array_equal(out[PRED_CULTIVATED][..., 0], proba >= 0.5)
    assert out.meta_info[PRED_MODEL_KEY] == "gcnn"
    np.testing.assert_allclose(predict_tiled(model, x, tile=16), whole, atol=1e-5)


def test_deep_predict_task_tta_averages_the_box_in_its_orientations(region: Path) -> None:
    torch.manual_seed(0)
    model = create_model("unet-b", n_frames=3, base_width=4).eval()  # trained-like: asymmetric kernels
    patch = EOPatch.load(str(region / "eopatches" / "box-000"))
    patch = ValidMaskTask().execute(ReflectanceTask().execute(patch))
    x = model_input(
        patch[(contract.BANDS[0], "REFLECTANCE")], patch[(contract.CLM[0], "VALID")], _normaliser(), 3
    )
    plain = predict_tiled(model, x, tile=40)
    expected = np.mean(
        [
            t.undo(predict_tiled(model, np.ascontiguousarray(t.apply(x)), tile=40))
            for t in TTA_TRANSFORMS["dihedral"]
        ],
        axis=0,
    )
    out = DeepModelPredictTask(model, _normaliser(), 3, 0.5, tile=40, tta="dihedral").execute(patch)
    np.testing.assert_allclose(out[PRED_PROBA][..., 0], expected, atol=1e-6)
    assert np.abs(expected - plain).max() > 1e-4  # the model has a preferred orientation
    np.testing.assert_array_equal(out[PRED_CULTIVATED][..., 0], out[PRED_PROBA][..., 0] >= 0.5)
    # the workflow's prediction node takes the mode from predict.tta (default: dihedral)
    trained = TrainedModel("unet-b", model, {}, normaliser=_normaliser(), n_frames=3)
    assert deep_prediction_tasks(trained, MappingConfig())[0].tta == "dihedral"
    fast = MappingConfig.model_validate({"predict": {"tta": "none"}})
    assert deep_prediction_tasks(trained, fast)[0].tta == "none"
    with pytest.raises(ValueError, match="tta"):
        MappingConfig.model_validate({"predict": {"tta": "rot90"}})


def test_frame_count_comes_from_the_config() -> None:
    config = MappingConfig.model_validate({"train": {"model": "unet-b"}})
    assert config.deep.inputs == "monthly" and frames_for(config) == 6  # the 6 monthly medians
    config = MappingConfig.model_validate({"train": {"model": "unet-b"}, "deep": {"inputs": "frames"}})
    assert frames_for(config) == 20 and model_kwargs(config, 20)["n_frames"] == 20
    config = MappingConfig.model_validate({"train": {"model": "gcnn"}, "deep": {"n_frames": 12}})
    assert frames_for(config) == 12 and "n_frames" not in model_kwargs(config, 12)
    config = MappingConfig.model_validate({"train": {"model": "gcnn"}, "deep": {"all_frames": True}})
    assert frames_for(config) is None
    config = MappingConfig.model_validate({"train": {"model": "unet-tc"}, "deep": {"all_frames": True}})
    with pytest.raises(
        S2AgriInputError, match=r"deep\.all_frames is for models that take any number of frames"
    ):
        frames_for(config)


def test_train_and_predict_gcnn_from_the_cli(region: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "gcnn.yaml"
    config.write_text(CONFIG)
    model = tmp_path / "gcnn"
    boxes = [str(region / "eopatches" / name) for name in ("box-000", "box-001")]
    assert cli.main(["train", *boxes, "--out", str(model), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "trained gcnn (7937 parameters)" in out
    card = json.loads((model / "model_card.json").read_text())
    whole = card["validation_box_scores"]["weighted_mcc"]
    assert f"whole validation boxes: weighted MCC {whole:.3f} at threshold {card['threshold']:.2f}" in out
    assert card["n_parameters"] == 7937 and card["epochs"] == 2 and card["file"] == "model.pt"
    assert len(card["training_boxes"]) == 1 and len(card["validation_boxes"]) == 1
    assert 30_000 < card["serialized_bytes"] < 60_000  # the seed reports 33.88 kB
    assert card["inference_seconds_per_box"] > 0
    assert set(card["validation_box_scores"]) >= {"weighted_mcc", "mcc_mask", "f1_mask", "acc_full"}
    # the threshold: the best of the grid on the whole validation box, predicted with the default TTA
    selection = card["threshold_selection"]
    by_threshold = selection["weighted_mcc_by_threshold"]
    assert selection["tta"] == "dihedral" and list(by_threshold) == [f"{t:g}" for t in THRESHOLDS]
    assert by_threshold[f"{card['threshold']:g}"] == max(by_threshold.values())
    assert card["validation_box_scores"]["weighted_mcc"] == pytest.approx(selection["weighted_mcc"])
    assert selection["weighted_mcc"] == pytest.approx(max(by_threshold.values()), abs=5e-5)
    assert selection["weighted_mcc_at_0.5"] == by_threshold["0.5"]
    assert selection["epoch"] == card["best_epoch"] and 0.2 <= selection["patches"]["threshold"] <= 0.8
    rows = (model / "training" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss") and len(rows) == 3
    trained = load_trained(model)
    # the default inputs: the cloud-masked medians of the 6 months of the season
    assert trained.is_deep and trained.n_frames == 6 and trained.normaliser.n_channels == 12
    assert trained.months == (3, 4, 5, 6, 7, 8)
    checkpoint = torch.load(model / "model.pt", weights_only=True)
    assert checkpoint["mapping_config"]["train"]["model"] == "gcnn"

    run = tmp_path / "run"
    box = str(region / "eopatches" / "box-002")
    assert cli.main(["predict", box, "--model", str(model), "--out", str(run), "--config", str(config)]) == 0
    patch = EOPatch.load(str(run / "eopatches" / "box-002"))
    assert patch[PRED_PROBA].shape == (160, 160, 1) and patch.meta_info[PRED_MODEL_KEY] == "gcnn"


def test_deep_training_needs_two_boxes(region: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "gcnn.yaml"
    config.write_text(CONFIG)
    box = str(region / "eopatches" / "box-000")
    assert cli.main(["train", box, "--out", str(tmp_path / "m"), "--config", str(config)]) == 2
    assert "needs at least 2 training boxes" in capsys.readouterr().err


def _config(tmp_path: Path, name: str, **trainer: object) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "train": {"model": "gcnn"},
                "deep": {
                    "patch_size": 80,
                    "tile": 24,
                    "samples_per_epoch": 8,
                    "trainer": {"batch_size": 4, "num_threads": 1, **trainer},
                },
            }
        )
    )
    return str(path)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["model_state"]


def test_train_resume_continues_an_interrupted_run_exactly(
    region: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from s2agri.models.training import Trainer

    boxes = [str(region / "eopatches" / f"box-00{i}") for i in range(3)]
    three = _config(tmp_path, "three", max_epochs=3)
    assert cli.main(["train", *boxes, "--out", str(tmp_path / "straight"), "--config", three]) == 0
    straight = json.loads((tmp_path / "straight" / "model_card.json").read_text())
    assert straight["epochs"] == 3 and straight["patches"]["train_per_epoch"] == 8  # 4 per training box
    assert [row["epoch"] for row in straight["learning_curve"]] == [1, 2, 3]
    assert straight["pos_weight"] > 0 and straight["threshold_selection"]["validation_boxes"]

    run_epoch = Trainer._run_epoch

    def interrupted(self: Trainer, *args: object) -> None:
        if self.epoch == 2:
            raise KeyboardInterrupt
        run_epoch(self, *args)

    monkeypatch.setattr(Trainer, "_run_epoch", interrupted)
    out = tmp_path / "model"
    assert cli.main(["train", *boxes, "--out", str(out), "--config", three]) == 130
    assert not out.exists()
    kept = tmp_path / ".model.checkpoints"
    assert torch.load(kept / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(Trainer, "_run_epoch", run_epoch)
    capsys.readouterr()

    other = _config(tmp_path, "other", max_epochs=3, lr=0.5)
    assert cli.main(["train", *boxes, "--out", str(out), "--config", other, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "changes deep.trainer.lr" in err and "only deep.trainer" in err
    assert cli.main(["train", *boxes[:2], "--out", str(out), "--resume"]) == 2
    assert "was trained on" in capsys.readouterr().err

    assert cli.main(["train", *boxes, "--out", str(out), "--resume"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["epochs"] == 3 and not kept.exists()
    drop_time = [{k: v for k, v in row.items()} for row in card["learning_curve"]]
    assert drop_time == straight["learning_curve"]
    for key, value in _weights(tmp_path / "straight").items():
        assert torch.allclose(value, _weights(out)[key], atol=1e-6, rtol=0), key
    assert card["threshold"] == straight["threshold"]
    rows = (out / "training" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4

    # a published run continues with more epochs
    five = _config(tmp_path, "five", max_epochs=4)
    assert cli.main(["train", *boxes, "--out", str(out), "--config", five, "--resume"]) == 0
    assert json.loads((out / "model_card.json").read_text())["epochs"] == 4


def test_resume_is_for_models_trained_in_epochs_only(region: Path, tmp_path: Path, capsys) -> None:
    boxes = [str(region / "eopatches" / f"box-00{i}") for i in range(3)]
    config = tmp_path / "lgbm.yaml"
    config.write_text("train: {model: lightgbm}\n")
    code = cli.main(["train", *boxes, "--out", str(tmp_path / "m"), "--config", str(config), "--resume"])
    assert code == 2 and "lightgbm is fitted in one go" in capsys.readouterr().err
    assert cli.main(["train", *boxes, "--out", str(tmp_path / "m"), "--model", "gcnn", "--resume"]) == 2
    assert "holds a last.pt" in capsys.readouterr().err


def test_model_option_that_leaves_pixel_settings_unused_is_an_input_error(
    region: Path, tmp_path: Path, capsys
) -> None:
    boxes = [str(region / "eopatches" / f"box-00{i}") for i in range(3)]
    config = tmp_path / "sampled.yaml"
    config.write_text("train: {samples_per_box: 500}\n")
    out = tmp_path / "m"
    assert cli.main(["train", *boxes, "--out", str(out), "--config", str(config), "--model", "gcnn"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--model gcnn does not fit the config's train section" in err
    assert "samples_per_box is a setting of the pixel models" in err and not out.exists()


def test_class_balance_weight_by_hand(region: Path) -> None:
    from s2agri.workflows.train_deep import class_balance_weight

    boxes = sorted((region / "eopatches").iterdir())[:2]
    positives = negatives = 0
    for box in boxes:
        patch = EOPatch.load(str(box), features=[contract.CULTIVATED, contract.NOT_DECLARED])
        declared = ~patch[contract.NOT_DECLARED][..., 0]
        positives += int((patch[contract.CULTIVATED][..., 0] & declared).sum())
        negatives += int((~patch[contract.CULTIVATED][..., 0] & declared).sum())
    expected = min(max(negatives / positives, 0.2), 5.0)
    assert class_balance_weight(boxes) == pytest.approx(expected)

"""Training loop: metrics, checkpoints, early stopping, seeding and exact resume."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch convention)
from torch.utils.data import DataLoader, Dataset

from s2agri.models.checkpoints import CHECKPOINT_KEYS, build_model_from_checkpoint, load_checkpoint
from s2agri.models.history import CSV_COLUMNS
from s2agri.models.registry import register_model
from s2agri.models.training import Trainer, TrainerConfig, epoch_seed, evaluate
from s2agri.tasks.metrics import accuracy, confusion, f1, mcc

MODEL_NAME = "test-tiny-segmenter"
T, C, SIZE = 3, 2, 6


@register_model(MODEL_NAME)
class TinySegmenter(nn.Module):
    """Mean over time, 1x1 conv, dropout, bilinear x4, 3x3 conv: logits (B, 1, 4h, 4w)."""

    name = MODEL_NAME
    receptive_halo_2p5m = 1

    def __init__(self, n_channels: int = C, hidden: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(n_channels, hidden, 1)
        self.drop = nn.Dropout(dropout)  # makes training depend on the RNG stream
        self.conv_out = nn.Conv2d(hidden, 1, 3, padding=1)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.drop(torch.relu(self.conv_in(x.mean(dim=1))))
        z = F.interpolate(z, scale_factor=4, mode="bilinear", align_corners=False)
        return self.conv_out(z)


class ToyPatches(Dataset):
    """Items like the project's datasets: x (T, C, h, w), y and weight (1, 4h, 4w), box name."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            x = rng.normal(size=(T, C, SIZE, SIZE)).astype(np.float32)
            y = np.kron(x[:, 0].mean(0) > 0, np.ones((4, 4)))[None].astype(np.float32)
            weight = rng.choice([0.0, 1.0, 2.5], size=y.shape, p=[0.2, 0.6, 0.2]).astype(np.float32)
            self.items.append(
                {
                    "x": torch.from_numpy(x),
                    "y": torch.from_numpy(y),
                    "weight": torch.from_numpy(weight),
                    "box": f"box-{i % 3}",
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def loaders(batch_size: int = 4) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(ToyPatches(16, seed=1), batch_size=batch_size, shuffle=True)
    val = DataLoader(ToyPatches(6, seed=2), batch_size=4, shuffle=False)
    return train, val


def config(**kwargs: Any) -> TrainerConfig:
    return TrainerConfig(
        **{"lr": 0.02, "batch_size": 4, "max_epochs": 4, "patience": 12, "num_threads": 1, **kwargs}
    )


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def strip_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def test_config_defaults_follow_seed_000() -> None:
    cfg = TrainerConfig()
    assert (cfg.lr, cfg.batch_size, cfg.max_epochs, cfg.patience) == (1e-3, 100, 100, 12)
    assert cfg.weighted_loss and cfg.seed == 0 and cfg.device == "cpu"
    assert cfg.num_threads is None and cfg.grad_clip is None
    with pytest.raises(ValidationError, match="extra"):
        TrainerConfig(learning_rate=0.1)
    with pytest.raises(ValidationError):
        TrainerConfig(patience=0)
    with pytest.raises(ValidationError, match="invalid torch device"):
        TrainerConfig(device="abacus")


def test_evaluate_matches_tasks_metrics() -> None:
    torch.manual_seed(3)
    model = TinySegmenter()
    _, val = loaders()
    result = evaluate(model, val)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(b["x"]) for b in val]).numpy()
    y = torch.cat([b["y"] for b in val]).numpy() > 0.5
    w = torch.cat([b["weight"] for b in val]).numpy()
    plain = confusion(y, logits >= 0, exclude=w <= 0)
    assert result["mcc"] == pytest.approx(mcc(plain))
    assert result["f1"] == pytest.approx(f1(plain))
    assert result["acc"] == pytest.approx(accuracy(plain))
    assert result["weighted_mcc"] == pytest.approx(mcc(confusion(y, logits >= 0, weights=w)))
    assert result["n_pixels"] == int((w > 0).sum())
    bce = F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(y).float(), reduction="none"
    )
    assert result["loss"] == pytest.approx(float((bce.numpy() * w).sum() / w.sum()), rel=1e-5)


def test_fit_writes_metrics_and_loadable_checkpoints(tmp_path: Path) -> None:
    trainer = Trainer.build(MODEL_NAME, {"hidden": 4}, config(max_epochs=3), tmp_path, progress=False)
    extra = {"normalisation": {"mean": [0.1, 0.2], "std": [1.0, 2.0]}, "mapping_config": {"threshold": 0.5}}
    history = trainer.fit(*loaders(), checkpoint_extra=extra)

    assert history.stop_reason == "max_epochs" and not history.stopped_early
    assert [row["epoch"] for row in history.epochs] == [1, 2, 3]
    assert history.best_val_loss == min(history.column("val_loss"))
    assert history.epochs[0]["improved"]
    for row in history.epochs:
        assert list(row) == list(CSV_COLUMNS)
        assert all(type(row[k]) is float for k in CSV_COLUMNS if k not in ("epoch", "improved"))

    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and list(rows[0]) == list(CSV_COLUMNS)
    assert float(rows[2]["val_loss"]) == history.epochs[2]["val_loss"]

    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / name, weights_only=True)
        assert set(CHECKPOINT_KEYS) | set(extra) == set(ckpt)
        assert ckpt["model_name"] == MODEL_NAME and ckpt["model_kwargs"] == {"hidden": 4}
        assert ckpt["normalisation"] == extra["normalisation"] and ckpt["extra_keys"] == sorted(extra)
        assert ckpt["trainer_config"] == trainer.config.model_dump()
        assert isinstance(ckpt["rng_state"]["torch"], torch.Tensor)
    last = load_checkpoint(tmp_path / "last.pt")
    best = load_checkpoint(tmp_path / "best.pt")
    assert last["epoch"] == 3 and len(last["history"]) == 3
    assert best["epoch"] == history.best_epoch and best["best_val_loss"] == history.best_val_loss
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left

    rebuilt = build_model_from_checkpoint(tmp_path / "last.pt")
    assert isinstance(rebuilt, TinySegmenter) and not rebuilt.training
    x = next(iter(loaders()[1]))["x"]
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trainer.model(x))


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    def run(seed: int, folder: str) -> dict[str, torch.Tensor]:
        trainer = Trainer.build(
            MODEL_NAME, {}, config(seed=seed, max_epochs=2), tmp_path / folder, progress=False
        )
        trainer.fit(*loaders())
        return weights(trainer.model)

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class CrashingLoader:
    """Wraps a loader and raises on the iteration number ``crash_at`` (a simulated crash)."""

    def __init__(self, loader: DataLoader, crash_at: int) -> None:
        self.loader = loader
        self.crash_at = crash_at
        self.calls = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.calls += 1
        if self.calls == self.crash_at:
            yield next(iter(self.loader))
            raise RuntimeError("simulated crash")
        yield from self.loader


@pytest.mark.parametrize("how", ["classmethod", "fit_argument"])
def test_resume_equals_straight_run(tmp_path: Path, how: str) -> None:
    straight = Trainer.build(MODEL_NAME, {}, config(max_epochs=4), tmp_path / "straight", progress=False)
    expected = straight.fit(*loaders(), checkpoint_extra={"tag": "x"})

    train, val = loaders()
    crashed = Trainer.build(MODEL_NAME, {}, config(max_epochs=4), tmp_path / "resumed", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(CrashingLoader(train, crash_at=3), val, checkpoint_extra={"tag": "x"})
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2

    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG state
    if how == "classmethod":
        resumed = Trainer.resume(tmp_path / "resumed" / "last.pt", progress=False)
        history = resumed.fit(*loaders())
    else:
        resumed = Trainer(
            TinySegmenter(), config(max_epochs=4), tmp_path / "resumed", model_kwargs={}, progress=False
        )
        history = resumed.fit(*loaders(), resume_from=tmp_path / "resumed" / "last.pt")

    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert strip_time(history.epochs) == strip_time(expected.epochs)
    assert (history.best_epoch, history.best_val_loss) == (expected.best_epoch, expected.best_val_loss)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["tag"] == "x"  # extras kept
    with (tmp_path / "resumed" / "metrics.csv").open() as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4]


def test_early_stopping_and_resume_of_a_finished_run(tmp_path: Path) -> None:
    # lr 0: the validation loss never improves after the first epoch.
    trainer = Trainer.build(
        MODEL_NAME, {}, config(lr=0.0, patience=2, max_epochs=10), tmp_path, progress=False
    )
    history = trainer.fit(*loaders())
    assert history.stopped_early and history.best_epoch == 1
    assert len(history.epochs) == 3 and history.column("improved") == [True, False, False]
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epochs_without_improvement"] == 2 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    again = Trainer.resume(tmp_path / "last.pt", progress=False).fit(*loaders())
    assert again.stopped_early and strip_time(again.epochs) == strip_time(history.epochs)


def test_resume_with_more_epochs(tmp_path: Path) -> None:
    Trainer.build(MODEL_NAME, {}, config(max_epochs=2), tmp_path, progress=False).fit(*loaders())
    resumed = Trainer.resume(tmp_path / "last.pt", config=config(max_epochs=3), progress=False)
    assert len(resumed.fit(*loaders()).epochs) == 3


def test_fresh_fit_refuses_an_existing_run(tmp_path: Path) -> None:
    Trainer.build(MODEL_NAME, {}, config(max_epochs=1), tmp_path, progress=False).fit(*loaders())
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer.build(MODEL_NAME, {}, config(max_epochs=1), tmp_path, progress=False).fit(*loaders())
    history = Trainer.build(
        MODEL_NAME, {}, config(max_epochs=1), tmp_path, progress=False, overwrite=True
    ).fit(*loaders())
    assert len(history.epochs) == 1


class EpochSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler recording ``set_epoch`` calls, as a group-by-box sampler would have."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size, self.epochs = n, batch_size, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n).tolist()
        return iter([order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def test_set_epoch_is_called_on_the_batch_sampler(tmp_path: Path) -> None:
    sampler = EpochSampler(16, 4)
    train = DataLoader(ToyPatches(16, seed=1), batch_sampler=sampler)
    Trainer.build(MODEL_NAME, {}, config(max_epochs=3), tmp_path, progress=False).fit(train, loaders()[1])
    assert sampler.epochs == [0, 1, 2]
    assert epoch_seed(0, 1) != epoch_seed(0, 2) and epoch_seed(0, 1) == epoch_seed(0, 1)


def test_unweighted_loss_and_grad_clip_run(tmp_path: Path) -> None:
    trainer = Trainer.build(
        MODEL_NAME,
        {},
        config(max_epochs=1, weighted_loss=False, grad_clip=0.5, num_threads=1),
        tmp_path,
        progress=False,
    )
    threads = torch.get_num_threads()
    history = trainer.fit(*loaders())
    assert torch.get_num_threads() == threads  # restored after the fit
    assert math.isfinite(history.epochs[0]["train_loss"])


def test_bad_arguments(tmp_path: Path) -> None:
    trainer = Trainer.build(MODEL_NAME, {}, config(max_epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"checkpoint_extra\['n'\] is a numpy float64"):
        trainer.fit(*loaders(), checkpoint_extra={"n": np.float64(1.0)})
    with pytest.raises(ValueError, match="reserved keys: epoch"):
        trainer.fit(*loaders(), checkpoint_extra={"epoch": 3})
    with pytest.raises(ValueError, match=r"is a (Posix|Windows)Path"):
        trainer.fit(*loaders(), checkpoint_extra={"where": tmp_path})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        Trainer(TinySegmenter(), config(), tmp_path, model_kwargs={"x": object()})
    with pytest.raises(ValueError, match="unknown model"):
        Trainer.build("no-such-model", {}, config(), tmp_path)

    class Nameless(nn.Module):
        pass

    with pytest.raises(ValueError, match="'name' attribute"):
        Trainer(Nameless(), config(), tmp_path)


def test_load_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"model_state": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an s2agri training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_model_kwargs_default_to_the_models_config(tmp_path: Path) -> None:
    model = TinySegmenter(hidden=3)
    model.config = {"hidden": 3}
    trainer = Trainer(model, config(max_epochs=1), tmp_path, progress=False)
    assert trainer.model_kwargs == {"hidden": 3}
    trainer.fit(*loaders())
    assert build_model_from_checkpoint(tmp_path / "last.pt").conv_in.out_channels == 3


# -- the CPU recipe: schedules, selection on the validation weighted MCC, class balance --------


def test_scheduled_lr_by_hand() -> None:
    from s2agri.models.training import scheduled_lr

    constant = config(lr=0.01)
    assert scheduled_lr(constant, 3, 2, 4) == 0.01
    cosine = config(lr=0.01, schedule="cosine", warmup_epochs=1.0, max_epochs=3)  # 12 steps, 4 warm-up
    assert scheduled_lr(cosine, 0, 0, 4) == pytest.approx(0.0001)
    assert scheduled_lr(cosine, 0, 2, 4) == pytest.approx(0.0001 + (0.01 - 0.0001) * 0.5)
    assert scheduled_lr(cosine, 1, 0, 4) == pytest.approx(0.01)  # peak right after the warm-up
    assert scheduled_lr(cosine, 2, 0, 4) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert scheduled_lr(cosine, 3, 0, 4) == pytest.approx(0.0, abs=1e-12)  # end of the run
    onecycle = config(lr=0.01, schedule="onecycle", warmup_epochs=0.5, max_epochs=2)  # 8 steps, 2 warm-up
    assert scheduled_lr(onecycle, 0, 0, 4) == pytest.approx(0.01 / 25)
    assert scheduled_lr(onecycle, 0, 2, 4) == pytest.approx(0.01)
    assert scheduled_lr(onecycle, 2, 0, 4) == pytest.approx(0.01 / 1e4)


def test_evaluate_scans_thresholds_like_brute_force() -> None:
    model = TinySegmenter()
    torch.manual_seed(0)
    _, val = loaders()
    result = evaluate(model, val)
    logits, ys, ws = [], [], []
    with torch.no_grad():
        for batch in val:
            logits.append(model(batch["x"]).flatten())
            ys.append(batch["y"].flatten())
            ws.append(batch["weight"].flatten())
    proba = torch.sigmoid(torch.cat(logits)).double().numpy()
    y, w = torch.cat(ys).numpy() > 0.5, torch.cat(ws).double().numpy()
    keep = w > 0
    best = (None, -1.0)
    for t in np.round(np.arange(0.2, 0.8001, 0.05), 2):
        pred = proba >= t
        value = mcc(confusion(y[keep], pred[keep], w[keep]))
        if value > best[1] + 1e-12:
            best = (float(t), value)
    assert result["threshold"] == pytest.approx(best[0])
    assert result["threshold_weighted_mcc"] == pytest.approx(best[1], abs=1e-9)
    assert result["threshold_weighted_mcc"] >= result["weighted_mcc"] - 1e-12 or result["threshold"] != 0.5


def test_selection_on_weighted_mcc_and_exact_resume_with_a_schedule(tmp_path: Path) -> None:
    recipe = config(max_epochs=4, schedule="cosine", warmup_epochs=1, selection="val_weighted_mcc")
    straight = Trainer.build(MODEL_NAME, {}, recipe, tmp_path / "straight", progress=False)
    history = straight.fit(*loaders())
    scores = history.column("val_threshold_weighted_mcc")
    assert history.best_epoch == int(np.argmax(scores)) + 1
    best_row = history.epochs[history.best_epoch - 1]
    assert history.best_threshold == best_row["val_threshold"]
    lrs = history.column("lr")
    # the lr of each epoch's last step: 3/4 of the warm-up, then down the cosine
    assert lrs[0] == pytest.approx(0.0002 + (0.02 - 0.0002) * 3 / 4)
    assert lrs[1] > lrs[2] > lrs[3] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 11 / 12)))
    best = load_checkpoint(tmp_path / "straight" / "best.pt")
    assert best["epoch"] == history.best_epoch and best["best_threshold"] == history.best_threshold

    train, val = loaders()
    crashed = Trainer.build(MODEL_NAME, {}, recipe, tmp_path / "resumed", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(CrashingLoader(train, crash_at=3), val)
    resumed = Trainer.resume(tmp_path / "resumed" / "last.pt", progress=False)
    again = resumed.fit(*loaders())
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert strip_time(again.epochs) == strip_time(history.epochs)
    assert again.best_threshold == history.best_threshold


def test_version_1_checkpoints_still_load(tmp_path: Path) -> None:
    trainer = Trainer.build(MODEL_NAME, {}, config(max_epochs=1), tmp_path / "run", progress=False)
    trainer.fit(*loaders())
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    ckpt["checkpoint_version"] = 1
    del ckpt["best_score"], ckpt["best_threshold"]
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["best_score"] == -loaded["best_val_loss"] and loaded["best_threshold"] is None

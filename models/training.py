"""The one training loop of every torch model (the segmenters and the parcel classifiers): seeded,
checkpointed, resumable.

Batches are dicts of tensors: ``x``, ``y``, ``weight`` and extras. The model is called as
``model(x, **inputs)`` where ``inputs`` are the batch entries named by its ``batch_inputs`` class
attribute (:func:`forward_batch`; e.g. ``doy`` of the parcel classifiers); segmenters take ``x``
alone. Patch datasets (:mod:`s2agri.models.datasets`) and parcel batches
(:class:`s2agri.models.parcel_training.ParcelBatches`) both feed it.

Seed 000's recipe is the default (:class:`TrainerConfig`): Adam, lr 1e-3, batch 100, binary
cross-entropy, early stopping with patience 12 on the validation loss, at most 100 epochs.

Loss: :mod:`s2agri.models.losses` (a weighted mean over the pixels of the batch, or the model's own
``training_loss`` hook). Learning curve: :mod:`s2agri.models.history`.

Validation metrics: MCC, F1 and accuracy of ``sigmoid(logit) >= 0.5`` (``logit >= 0``) on the
pixels with ``weight > 0``, from confusion counts summed over the whole validation set
(:mod:`s2agri.tasks.metrics`); ``val_weighted_mcc`` weights the counts by ``weight`` (it equals
``val_mcc`` when the weights are 0/1, and is the challenge score with the challenge weight map).

Outputs in ``out_dir``: ``metrics.csv`` (one row per epoch, :data:`CSV_COLUMNS`), ``last.pt``
after every epoch and ``best.pt`` at every improvement of the validation loss, both written
atomically (temporary name, then ``os.replace``) and loadable with
``torch.load(path, weights_only=True)`` (:data:`CHECKPOINT_KEYS` plus the caller's extras; layout,
writing and reading in :mod:`s2agri.models.checkpoints`).

Seeding and resume. Before epoch ``e`` (0-based) torch, numpy's global RNG and ``random`` are
seeded from ``(seed, e)`` (:func:`epoch_seed`) and ``set_epoch(e)`` is called on the loaders'
``batch_sampler``/``sampler`` when they have one; deterministic algorithms are requested during
:meth:`Trainer.fit`. The random stream of an epoch therefore depends only on the seed, the
epoch index and the state at its start (weights, optimizer), all of which a checkpoint holds,
so ``N`` epochs straight equal ``k`` epochs, a resume from ``last.pt``, then ``N - k`` epochs.
The initial weights are the caller's: build the model after :func:`seed_everything` (as
:meth:`Trainer.build` does) for runs that are reproducible end to end.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Not tqdm.auto: its asyncio class calls iter() once more, so a DataLoader would draw from the RNG
# (and start its workers) twice per epoch.
from tqdm import tqdm

from s2agri.tasks.metrics import Confusion, accuracy, f1, mcc

from .checkpoints import (
    BEST_CHECKPOINT,
    CHECKPOINT_KEYS,
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    atomic_save,
    check_plain,
    load_checkpoint,
)
from .history import METRICS_CSV, History, csv_row, csv_text
from .losses import batch_loss, forward_batch
from .registry import create_model, get_constructor
from .trainer_config import THRESHOLDS, TrainerConfig

LOGGER = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit seed of epoch ``epoch`` (0-based) of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and ``random`` with ``seed`` (< 2**32)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def scheduled_lr(config: TrainerConfig, epoch: int, batch: int, n_batches: int) -> float:
    """The learning rate of batch ``batch`` (0-based) of epoch ``epoch`` under ``config.schedule``.

    A pure function of the position in the run (``max_epochs * n_batches`` steps), so a resumed run
    follows the same curve. ``cosine``: linear warm-up from ``lr / 100`` over ``warmup_epochs``, then
    a half cosine down to 0 at the last step. ``onecycle``: linear warm-up from ``lr / 25``, then a
    half cosine down to ``lr / 1e4``.
    """
    if config.schedule == "constant":
        return config.lr
    total = max(1, config.max_epochs * n_batches)
    step = epoch * n_batches + batch
    warmup = config.warmup_epochs * n_batches
    start, floor = (
        (config.lr / 100, 0.0) if config.schedule == "cosine" else (config.lr / 25, config.lr / 1e4)
    )
    if step < warmup:
        return start + (config.lr - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _set_loader_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch(epoch)`` on the loader, its batch sampler and its sampler, where they have one."""
    seen: set[int] = set()
    for obj in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


def _unpack(batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (``x`` as float32): ``x``, ``y``, ``weight`` and any extra
    targets (e.g. ``aux`` of the delineation models); other entries (box names) are dropped."""
    if not isinstance(batch, Mapping) or not {"x", "y", "weight"} <= batch.keys():
        raise ValueError("a batch must be a dict with 'x', 'y' and 'weight' tensors")
    tensors = {
        key: value.to(device, non_blocking=True)
        for key, value in batch.items()
        if isinstance(value, torch.Tensor)
    }
    tensors["x"] = tensors["x"].float()
    return tensors


def _model_state_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    """Adam, or AdamW when ``config.weight_decay > 0``."""
    if config.weight_decay > 0:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


@contextlib.contextmanager
def _torch_settings(num_threads: int | None, deterministic: bool) -> Iterator[None]:
    """Process-wide torch settings for the duration of a fit, restored afterwards."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.benchmark = benchmark


class Trainer:
    """Fits a registered torch segmenter with :class:`TrainerConfig`, writing to ``out_dir``.

    ``model`` needs a ``name`` registered in :mod:`s2agri.models.registry`; ``model_kwargs``
    (JSON-serialisable) rebuild it with ``create_model(name, **model_kwargs)`` and default to the
    model's ``model_kwargs`` or ``config`` mapping attribute, else ``{}``. ``progress``: tqdm
    bars (None: only on a TTY). A fresh :meth:`fit` refuses an ``out_dir`` that already holds
    ``last.pt`` unless ``overwrite=True``: resume it instead.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainerConfig | Mapping[str, Any] | None = None,
        out_dir: PathLike = ".",
        *,
        model_kwargs: Mapping[str, Any] | None = None,
        progress: bool | None = None,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
        if config is None:
            config = TrainerConfig()
        elif not isinstance(config, TrainerConfig):
            config = TrainerConfig.model_validate(dict(config))
        name = getattr(model, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(
                "the model has no 'name' attribute: it is needed to rebuild it from a checkpoint"
            )
        get_constructor(name)  # ValueError listing the registered names
        if model_kwargs is None:
            for attribute in ("model_kwargs", "config"):  # the GCNN keeps its kwargs in .config
                candidate = getattr(model, attribute, None)
                if isinstance(candidate, Mapping):
                    model_kwargs = candidate
                    break
            if model_kwargs is None:
                LOGGER.warning("no model_kwargs given for %s: checkpoints rebuild it with defaults", name)
                model_kwargs = {}
        try:
            model_kwargs = json.loads(json.dumps(dict(model_kwargs)))
        except (TypeError, ValueError) as error:
            raise ValueError(f"model_kwargs must be JSON-serialisable: {error}") from None
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested but CUDA is not available")
        self.config = config
        self.model_name = name
        self.model_kwargs: dict[str, Any] = dict(model_kwargs)
        self.model = model.to(self.device)
        self.out_dir = Path(out_dir)
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.overwrite = overwrite
        self.optimizer = _optimizer(self.model, config)
        self.epoch = 0  # completed epochs
        self.best_val_loss = math.inf
        #: best selection score so far: -val loss, or the validation weighted MCC at its best threshold
        self.best_score = -math.inf
        self.best_threshold: float | None = None
        self.best_epoch: int | None = None
        self.epochs_without_improvement = 0
        self.history: list[dict[str, Any]] = []
        self._extra: dict[str, Any] = {}
        self._pending: dict[str, Any] | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model_name: str,
        model_kwargs: Mapping[str, Any] | None = None,
        config: TrainerConfig | Mapping[str, Any] | None = None,
        out_dir: PathLike = ".",
        **kwargs: Any,
    ) -> Trainer:
        """A trainer for a new registered model, initialised after ``seed_everything(config.seed)``."""
        if config is None:
            config = TrainerConfig()
        elif not isinstance(config, TrainerConfig):
            config = TrainerConfig.model_validate(dict(config))
        model_kwargs = dict(model_kwargs or {})
        seed_everything(config.seed)
        model = create_model(model_name, **model_kwargs)
        return cls(model, config, out_dir, model_kwargs=model_kwargs, **kwargs)

    @classmethod
    def resume(
        cls,
        path: PathLike,
        out_dir: PathLike | None = None,
        *,
        config: TrainerConfig | Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> Trainer:
        """A trainer restored from checkpoint ``path``; :meth:`fit` continues where it stopped.

        ``out_dir`` defaults to the checkpoint's folder; ``config`` (default: the stored one) may
        e.g. raise ``max_epochs`` or change the device; other changes break exact resumption.
        """
        ckpt = load_checkpoint(path)
        model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
        if config is None:
            config = TrainerConfig.model_validate(ckpt["trainer_config"])
        trainer = cls(
            model,
            config,
            Path(path).parent if out_dir is None else out_dir,
            model_kwargs=ckpt["model_kwargs"],
            progress=progress,
        )
        trainer._restore(ckpt, str(path))
        return trainer

    def _restore(self, ckpt: Mapping[str, Any], source: str) -> None:
        if ckpt["model_name"] != self.model_name:
            raise ValueError(
                f"checkpoint {source} is of model {ckpt['model_name']!r}, not {self.model_name!r}"
            )
        history = [dict(row) for row in ckpt["history"]]
        if len(history) != ckpt["epoch"]:
            raise ValueError(
                f"checkpoint {source} holds {len(history)} history rows for {ckpt['epoch']} epochs"
            )
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
        self.epoch = int(ckpt["epoch"])
        self.best_val_loss = float(ckpt["best_val_loss"])
        self.best_score = float(ckpt.get("best_score", -self.best_val_loss))
        self.best_threshold = ckpt.get("best_threshold")
        self.best_epoch = ckpt["best_epoch"]
        self.epochs_without_improvement = int(ckpt["epochs_without_improvement"])
        self.history = history
        self._extra = {key: ckpt[key] for key in ckpt["extra_keys"]}
        _set_rng_state(ckpt.get("rng_state"))
        stored = ckpt["trainer_config"]
        changed = sorted(k for k, v in self.config.model_dump().items() if stored.get(k) != v)
        LOGGER.info(
            "resumed %s from %s after epoch %d (best val loss %.5g)%s",
            self.model_name,
            source,
            self.epoch,
            self.best_val_loss,
            f"; config changed: {', '.join(changed)}" if changed else "",
        )

    @property
    def extra(self) -> dict[str, Any]:
        """The caller's extras stored with every checkpoint (restored on a resume)."""
        return dict(self._extra)

    # -- paths ---------------------------------------------------------------------------------

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST_CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / METRICS_CSV

    # -- training ------------------------------------------------------------------------------

    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any],
        *,
        checkpoint_extra: Mapping[str, Any] | None = None,
        resume_from: PathLike | None = None,
    ) -> History:
        """Train until early stopping or ``max_epochs``; returns the whole run's :class:`History`.

        ``checkpoint_extra`` (e.g. ``{"normalisation": ..., "mapping_config": ...}``) is stored at
        the top level of every checkpoint; on a resume it defaults to the checkpoint's extras.
        ``resume_from`` restores this trainer from a checkpoint first (see :meth:`resume`).
        """
        if resume_from is not None:
            self._restore(load_checkpoint(resume_from), str(resume_from))
        if checkpoint_extra is not None:
            extra = dict(checkpoint_extra)
            clash = sorted(set(extra) & set(CHECKPOINT_KEYS))
            if clash:
                raise ValueError(f"checkpoint_extra uses reserved keys: {', '.join(clash)}")
            check_plain(extra, "checkpoint_extra")
            self._extra = extra
        resuming = self.epoch > 0
        if not resuming and self.last_path.exists() and not self.overwrite:
            raise ValueError(
                f"{self.out_dir} already holds a run ({LAST_CHECKPOINT}): resume it or pass overwrite=True"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            self.best_path.unlink(missing_ok=True)  # an overwritten run's best.pt is stale
        # metrics.csv is rewritten from the history (the checkpoint is the source of truth).
        tmp = self.metrics_path.with_name(f".{METRICS_CSV}.tmp-{os.getpid()}")
        tmp.write_text(csv_text(self.history), encoding="utf-8")
        os.replace(tmp, self.metrics_path)

        cfg = self.config
        if cfg.schedule != "constant" and not hasattr(train_loader, "__len__"):
            raise ValueError(
                f"schedule {cfg.schedule!r} needs a train loader with a length (batches per epoch)"
            )
        LOGGER.info(
            "training %s (%d parameters) on %s: epochs %d..%d, lr %g (%s), patience %d on %s",
            self.model_name,
            sum(p.numel() for p in self.model.parameters()),
            self.device,
            self.epoch + 1,
            cfg.max_epochs,
            cfg.lr,
            cfg.schedule,
            cfg.patience,
            cfg.selection,
        )
        loader_batch = getattr(train_loader, "batch_size", None)
        if loader_batch is not None and loader_batch != cfg.batch_size:
            LOGGER.warning(
                "the train loader's batch size %d differs from config %d", loader_batch, cfg.batch_size
            )

        stop_reason = ""
        with _torch_settings(cfg.num_threads, cfg.deterministic):
            while True:
                if self.epochs_without_improvement >= cfg.patience:
                    stop_reason = "early_stopping"
                    break
                if self.epoch >= cfg.max_epochs:
                    stop_reason = "max_epochs"
                    break
                self._run_epoch(train_loader, val_loader)
        if stop_reason == "early_stopping":
            LOGGER.info("early stopping after epoch %d: best epoch %s", self.epoch, self.best_epoch)
        return History(
            epochs=[dict(row) for row in self.history],
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss,
            stop_reason=stop_reason,
            best_threshold=self.best_threshold,
        )

    def _run_epoch(self, train_loader: Iterable[Any], val_loader: Iterable[Any]) -> None:
        cfg = self.config
        index = self.epoch  # 0-based index of the epoch being run
        start = time.perf_counter()
        seed_everything(epoch_seed(cfg.seed, index))
        _set_loader_epoch(train_loader, index)
        _set_loader_epoch(val_loader, index)

        self.model.train()
        loss_sum = 0.0
        weight_sum = 0.0
        n_batches = len(train_loader) if cfg.schedule != "constant" else 1  # type: ignore[arg-type]
        bar = tqdm(
            train_loader,
            desc=f"epoch {index + 1}/{cfg.max_epochs}",
            unit="batch",
            leave=False,
            disable=not self.progress,
        )
        for step, batch in enumerate(bar):
            if cfg.schedule != "constant":
                for group in self.optimizer.param_groups:
                    group["lr"] = scheduled_lr(cfg, index, step, n_batches)
            tensors = _unpack(batch, self.device)
            outputs = forward_batch(self.model, tensors)
            loss_sum_batch, batch_weight = batch_loss(
                self.model, outputs, tensors, weighted=cfg.weighted_loss, pos_weight=cfg.pos_weight
            )
            if batch_weight.item() <= 0:
                LOGGER.debug("skipping a batch without weighted pixels")
                continue
            loss = loss_sum_batch / batch_weight
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            loss_sum += float(loss_sum_batch.detach().item())
            weight_sum += float(batch_weight.item())
            bar.set_postfix(loss=f"{loss_sum / weight_sum:.4f}", refresh=False)
        bar.close()
        if weight_sum <= 0:
            raise ValueError("the train loader yielded no pixel with a weight > 0")
        train_loss = loss_sum / weight_sum
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"non-finite train loss {train_loss} in epoch {index + 1}")

        val = evaluate(
            self.model,
            val_loader,
            weighted_loss=cfg.weighted_loss,
            device=self.device,
            progress=self.progress,
            pos_weight=cfg.pos_weight,
        )
        score = val["loss"] * -1.0 if cfg.selection == "val_loss" else val["threshold_weighted_mcc"]
        improved = score > self.best_score
        if improved:
            self.best_score = score
            self.best_val_loss = val["loss"]
            self.best_threshold = val["threshold"]
            self.best_epoch = index + 1
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.epoch = index + 1
        row = {
            "epoch": index + 1,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_mcc": val["mcc"],
            "val_f1": val["f1"],
            "val_acc": val["acc"],
            "val_weighted_mcc": val["weighted_mcc"],
            "val_threshold": val["threshold"],
            "val_threshold_weighted_mcc": val["threshold_weighted_mcc"],
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "epoch_seconds": time.perf_counter() - start,
            "improved": bool(improved),
        }
        self.history.append(row)

        ckpt = self._checkpoint()
        atomic_save(ckpt, self.last_path)
        if improved:
            atomic_save(ckpt, self.best_path)
        with self.metrics_path.open("a", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerow(csv_row(row))
            handle.flush()
        LOGGER.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val MCC %.3f, F1 %.3f, acc %.3f, "
            "weighted MCC %.3f at threshold %.2f (%.1f s)%s",
            row["epoch"],
            cfg.max_epochs,
            train_loss,
            val["loss"],
            val["mcc"],
            val["f1"],
            val["acc"],
            val["threshold_weighted_mcc"],
            val["threshold"],
            row["epoch_seconds"],
            " *" if improved else f" ({self.epochs_without_improvement}/{cfg.patience} without improvement)",
        )

    def _checkpoint(self) -> dict[str, Any]:
        ckpt: dict[str, Any] = {
            "checkpoint_version": CHECKPOINT_VERSION,
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "model_state": _model_state_cpu(self.model),
            "optimizer_state": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "best_val_loss": float(self.best_val_loss),
            "best_score": float(self.best_score),
            "best_threshold": self.best_threshold,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "trainer_config": self.config.model_dump(),
            "history": [dict(row) for row in self.history],
            "rng_state": _rng_state(),
            "extra_keys": sorted(self._extra),
        }
        ckpt.update(self._extra)
        return ckpt


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    weighted_loss: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
    pos_weight: float | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, float]:
    """Pooled loss and ``mcc``/``f1``/``acc``/``weighted_mcc`` at 0.5 of ``model`` over ``loader``.

    The model is put in eval mode (and left there). Keys: ``loss``, ``mcc``, ``f1``, ``acc``,
    ``weighted_mcc``, ``n_pixels`` (pixels with weight > 0), and ``threshold``: the probability
    threshold of ``thresholds`` with the highest weighted MCC, ``threshold_weighted_mcc`` that MCC
    (the lowest threshold wins a tie).
    """
    device = torch.device(device)
    model.eval()
    loss_sum = 0.0
    weight_sum = 0.0
    # tn, fp, fn, tp: plain counts and weighted sums, float64 (masked sums are deterministic on CUDA)
    counts = torch.zeros(4, dtype=torch.float64, device=device)
    weighted = torch.zeros(4, dtype=torch.float64, device=device)
    # per threshold: weighted tp and fp (fn and tn follow from the class totals)
    cut = torch.logit(torch.tensor(thresholds, dtype=torch.float64, device=device))
    scan = torch.zeros((len(thresholds), 2), dtype=torch.float64, device=device)
    for batch in tqdm(loader, desc="validation", unit="batch", leave=False, disable=not progress):
        tensors = _unpack(batch, device)
        y, w = tensors["y"], tensors["weight"]
        outputs = forward_batch(model, tensors)
        loss_sum_batch, batch_weight = batch_loss(
            model, outputs, tensors, weighted=weighted_loss, pos_weight=pos_weight
        )
        logits = outputs[:, :1]  # the cultivated (extent) logit of single- and multi-output models
        loss_sum += float(loss_sum_batch.item())
        weight_sum += float(batch_weight.item())
        keep = w > 0
        truth = y > 0.5
        pred = logits >= 0  # sigmoid(logit) >= 0.5
        w64 = w.to(torch.float64)
        for i, cell in enumerate((~truth & ~pred, ~truth & pred, truth & ~pred, truth & pred)):
            cell = cell & keep
            counts[i] += cell.sum()
            weighted[i] += (w64 * cell).sum()
        kept = keep.flatten()
        flat_logit = logits.detach().flatten()[kept].to(torch.float64)
        flat_w = w64.flatten()[kept]
        flat_truth = truth.flatten()[kept]
        # bin i holds the pixels at or above exactly the first i thresholds: O(pixels) memory
        bins = torch.bucketize(flat_logit, cut, right=True)
        for column, weights in enumerate((flat_w * flat_truth, flat_w * ~flat_truth)):
            per_bin = torch.bincount(bins, weights=weights, minlength=len(thresholds) + 1)
            scan[:, column] += per_bin.flip(0).cumsum(0).flip(0)[1:]
    if weight_sum <= 0:
        raise ValueError("the validation loader yielded no pixel with a weight > 0")
    tn, fp, fn, tp = (float(v) for v in counts.cpu())
    plain = Confusion(tp=tp, fp=fp, fn=fn, tn=tn)
    wtn, wfp, wfn, wtp = (float(v) for v in weighted.cpu())
    positives, negatives = wtp + wfn, wtn + wfp
    best_threshold, best_mcc = thresholds[0], -math.inf
    for t, (tp_t, fp_t) in zip(thresholds, scan.cpu().tolist(), strict=True):
        value = float(mcc(Confusion(tp=tp_t, fp=fp_t, fn=positives - tp_t, tn=negatives - fp_t)))
        if value > best_mcc:
            best_threshold, best_mcc = t, value
    return {
        "loss": loss_sum / weight_sum,
        "mcc": float(mcc(plain)),
        "f1": float(f1(plain)),
        "acc": float(accuracy(plain)),
        "weighted_mcc": float(mcc(Confusion(tp=wtp, fp=wfp, fn=wfn, tn=wtn))),
        "n_pixels": int(plain.total),
        "threshold": float(best_threshold),
        "threshold_weighted_mcc": best_mcc,
    }

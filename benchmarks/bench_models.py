"""Benchmark: every model of the seeds on the same simulated training and hold-out boxes.

All models (the ndvi rule, LightGBM, RandomForest, the 11 deep segmenters and the 3 parcel
classifiers) are trained by the functions behind ``s2agri train`` on the same training boxes
(``--train``, default box-000..005 of simulator seed 0, ``--size`` 200 px at 10 m), with fixed
seeds, predicted on the same hold-out boxes (``--holdout``, default box-006..009) by
:func:`s2agri.workflows.predict.predict_boxes` (the ``s2agri predict`` workflow) and scored at
2.5 m by :func:`s2agri.workflows.evaluate.evaluate_boxes`. Per model:

* weighted MCC, MCC / F1 / accuracy Full and Mask: pooled over the hold-out boxes and mean / std
  over boxes; parameters, serialized size, training seconds, epochs, inference seconds per box;
* scores on the pixels of small reference parcels (< 400 px at 2.5 m) and of the larger ones
  (:mod:`s2agri.tasks.resolution`);
* the model's own 10 m map (its 2.5 m probabilities averaged per 10 m pixel, nearest-upsampled):
  pooled scores and the gain of the 2.5 m map over it.

CPU budget (2 cores): the deep models use their ``cpu`` presets (``s2agri.models.presets``) and
about the same training time each (:data:`TRAIN_BUDGET_S`, turned into an epoch cap per model from
measured epoch times, see ``cap`` in the JSON), far below the seeds' recipes: they are not
converged and their scores are lower bounds. Parcel models see the reference parcel polygons of every box (seed 004's
object-based setting): their maps take the parcel outlines from the reference, which no other
model gets.

    python benchmarks/bench_models.py [--models spinet mlp ...] [--reuse-models] [--epochs spinet=2]
        [--budget-s 600] [--inputs monthly] [--merge]

``--merge`` replaces the rows of the models run in the committed results and keeps the others (each
row records its own budget and inputs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
from pathlib import Path

import numpy as np
from _common import (
    REPORTED,
    add_box_arguments,
    predict_and_score,
    score_entry,
    split_boxes_from_args,
    start_run,
    train_or_reuse,
    write_results,
)

from s2agri.models.names import DEEP_MODELS, MONTHLY_MODELS, PARCEL_MODELS, PIXEL_MODELS

LOGGER = logging.getLogger("bench_models")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "models.json"
TABLE = HERE / "results" / "models.md"
DEFAULT_DATA = Path("/tmp/s2agri-bench-models")

#: The former default pixel model: seed 000's recipe (``--config seed000``, per-frame 5x5 statistics).
SEED000_LIGHTGBM = "lightgbm-seed000"
MODELS = ("ndvi-rule", *PIXEL_MODELS, SEED000_LIGHTGBM, *DEEP_MODELS, *PARCEL_MODELS)
#: Training budget of every deep model (seconds on this 2-core machine): each model's epoch cap is
#: ``TRAIN_BUDGET_S / (EPOCH_SCALE * EPOCH_SECONDS)`` (at least 2, at most 40 epochs), so fast models
#: are not stopped after the few epochs a slow one can afford.
TRAIN_BUDGET_S = 200
#: Epochs of the CPU recipe (512 random training patches, validation on the grid of 3 boxes of 250 px)
#: relative to the epochs the table below was measured on: (3 x 512 + 300) / (3 x 320 + 64) passes.
EPOCH_SCALE = 1.8
#: Seconds per epoch (5 training boxes of 64 patches, batch 16, 2 threads, validation included),
#: measured by a first run of this script with the same settings.
EPOCH_SECONDS = {
    "unet-tc": 5.2,
    "unet-b": 7.4,
    "gcnn": 6.7,
    "spinet": 102.0,
    "spinet-nomrf": 123.2,
    "fg-unet": 9.4,
    "deeplab": 7.1,
    "mlp": 1.7,
    "lstm": 30.7,
    "convlstm": 11.8,
    "convstar": 6.6,
    "unet-delineation": 5.6,  # estimated: unet-tc plus the two extra heads' loss
}


def epoch_caps(budget_s: float) -> dict[str, int]:
    """Deep model -> epoch cap of a ``budget_s`` training budget (2 to 100 epochs)."""
    return {
        name: min(100, max(2, int(budget_s // (EPOCH_SCALE * seconds))))
        for name, seconds in EPOCH_SECONDS.items()
    }


EPOCHS = epoch_caps(TRAIN_BUDGET_S)
PARCEL_EPOCHS = 60


def model_config(  # type: ignore[no-untyped-def]
    name: str,
    epochs: dict[str, int],
    threads: int,
    inputs: str | None = None,
    patience: int | None = None,
    tta: str | None = None,
):
    """The MappingConfig of ``name``: defaults plus the benchmark's caps, thread counts, deep inputs,
    (``patience``, e.g. the cap itself: no early stop) the early-stopping patience and (``tta``) the
    deep models' test-time augmentation."""
    from s2agri.workflows.config import MappingConfig, load_config

    if name == "ndvi-rule":
        return MappingConfig()
    if name == SEED000_LIGHTGBM:
        return load_config("seed000")
    data: dict = {"train": {"model": name}}
    if name in DEEP_MODELS:  # the CPU recipe (DEEP_RECIPE) with the budget's epoch cap
        data["deep"] = {"cache_boxes": 6, "trainer": {"max_epochs": epochs[name], "num_threads": threads}}
        if inputs is not None:  # else the config's default
            data["deep"]["inputs"] = inputs
        if patience is not None:
            data["deep"]["trainer"]["patience"] = patience
        if tta is not None:  # else the config's default
            data["predict"] = {"tta": tta}
    if name in PARCEL_MODELS:
        # one torch thread: the parcel models' small ops are much slower with two on this machine
        data["deep"] = {"trainer": {"num_threads": 1}}
        data["parcel"] = {"max_epochs": PARCEL_EPOCHS, "patience": 10, "steps": "monthly"}
    return MappingConfig.model_validate(data)


def train(name: str, boxes: list[Path], config, data: Path, reuse: bool, folder: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Train (or reuse) model ``name`` into ``data/models/<folder or name>``; returns its card."""
    if name in PIXEL_MODELS or name == SEED000_LIGHTGBM:
        from s2agri.workflows.train import train_model as train_fn
    elif name in DEEP_MODELS:
        from s2agri.workflows.train_deep import train_deep_model as train_fn
    else:
        from s2agri.workflows.train_parcel import train_parcel_model as train_fn
    return train_or_reuse(name, boxes, config, data / "models" / (folder or name), reuse, train_fn)


def holdout_references(holdout: list[Path]) -> dict[str, np.ndarray]:
    """Per hold-out box, the size (2.5 m pixels) of the reference parcel under each 2.5 m pixel."""
    from eolearn.core import EOPatch

    from s2agri.tasks import contract
    from s2agri.tasks.resolution import parcel_sizes
    from s2agri.tasks.zonal import parcel_index_map

    sizes = {}
    for box in holdout:
        patch = EOPatch.load(str(box), features=[contract.REFERENCE, contract.CULTIVATED])
        shape = patch[contract.CULTIVATED].shape[:2]
        index = parcel_index_map(
            patch[contract.REFERENCE], patch.bbox, shape, buffer=contract.REFERENCE_BUFFER_M
        )
        sizes[box.name] = parcel_sizes(index)
    return sizes


def diagnostics(run: Path, sizes: dict[str, np.ndarray], threshold: float) -> dict:
    """Scores by parcel size and of the 10 m version of the map, pooled over the hold-out boxes."""
    from eolearn.core import EOPatch

    from s2agri.tasks import contract
    from s2agri.tasks.metrics import Confusion, box_confusions, f1, mcc, pool_confusions, scores
    from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_PROBA
    from s2agri.tasks.resolution import GROUPS, coarse_prediction, size_group_confusions

    groups: dict[str, list[Confusion]] = {g: [] for g in GROUPS}
    fine, coarse, per_box = [], [], []
    for name, size in sizes.items():
        features = [contract.CULTIVATED, contract.NOT_DECLARED, PRED_PROBA, PRED_CULTIVATED]
        patch = EOPatch.load(str(run / "eopatches" / name), features=features)
        truth = patch[contract.CULTIVATED][..., 0]
        not_declared = patch[contract.NOT_DECLARED][..., 0]
        pred = patch[PRED_CULTIVATED][..., 0]
        for group, value in size_group_confusions(truth, pred, size, not_declared).items():
            groups[group].append(value)
        pred_10m = coarse_prediction(patch[PRED_PROBA][..., 0], threshold)
        fine.append(box_confusions(truth, pred, not_declared))
        coarse.append(box_confusions(truth, pred_10m, not_declared))
        per_box.append(
            {
                "box": name,
                "weighted_mcc_2p5m": scores(fine[-1])["weighted_mcc"],
                "weighted_mcc_10m": scores(coarse[-1])["weighted_mcc"],
            }
        )

    def group_scores(c: Confusion) -> dict:
        recall = c.tp / (c.tp + c.fn) if c.tp + c.fn else float("nan")
        return {
            "mcc": mcc(c),
            "f1": f1(c),
            "acc": (c.tp + c.tn) / c.total,
            "recall": recall,
            "pixels": c.total,
        }

    at_2p5, at_10 = scores(pool_confusions(fine)), scores(pool_confusions(coarse))
    return {
        "parcel_size": {g: group_scores(Confusion.sum(groups[g])) for g in GROUPS},
        "map_10m": at_10,
        "gain_2p5m_over_10m": {k: at_2p5[k] - at_10[k] for k in REPORTED},
        "per_box_10m": per_box,
    }


def entry_of(name: str, card: dict | None, timing: dict, rows: list[dict], extra: dict) -> dict:
    entry = score_entry(name, card, timing, rows)
    entry.update(extra)
    if card is None:
        return entry
    entry.update(
        {
            "fit_seconds": card["train_seconds"],
            "train_wall_seconds": card.get("train_wall_seconds"),
            "model_reused_from_earlier_run": bool(card.get("reused", False)),
        }
    )
    for key in (
        "epochs",
        "best_epoch",
        "stop_reason",
        "model_kwargs",
        "preset",
        "n_frames",
        "months",
        "threshold",
        "threshold_selection",
        "pos_weight",
        "learning_curve",
        "validation",
    ):
        if key in card:
            entry[key] = card[key]
    if "sampling_seconds" in card:
        entry["sampling_seconds"] = card["sampling_seconds"]
    if "patches" in card:
        entry["patches"] = card["patches"]
        batch = card["config"]["deep"]["trainer"]["batch_size"]
        per_epoch = -(-card["patches"]["train_per_epoch"] // batch)  # ceil: the last batch may be short
        entry["optimizer_steps"] = {
            "per_epoch": per_epoch,
            "total": per_epoch * card["epochs"],
            "batch_size": batch,
        }
    if "parcels" in card:
        entry["parcels"] = card["parcels"]
    return entry


def markdown_table(entries: dict[str, dict], ranking: list[str]) -> str:
    """The comparison as a markdown table (pooled scores unless marked mean ± std)."""
    head = (
        "| model | wMCC | wMCC mean ± std | MCC Full / Mask | F1 Full / Mask | Acc Full / Mask "
        "| small parcels MCC / recall | large parcels MCC / recall | 10 m map wMCC | 2.5 m gain "
        "| params | size MB | budget s | train s (epochs) | val wMCC | s/box |"
    )
    lines = [head, "|" + "---|" * 16]
    for name in ranking:
        e = entries[name]
        p, m, s = e["pooled"], e["mean"], e["std"]
        small, large = e["parcel_size"]["small"], e["parcel_size"]["large"]
        train_s = e.get("train_wall_seconds") or e.get("fit_seconds")
        epochs = f" ({e['epochs']})" if "epochs" in e else ""
        train_text = "-" if train_s is None else f"{train_s:.0f}{epochs}"
        # deep rows: the run's training budget (rows without one come from the 200 s run)
        budget = e.get("budget", {}).get("train_budget_s", TRAIN_BUDGET_S) if "patches" in e else None
        budget_text = "-" if budget is None else f"{budget:.0f}"
        # the deep models' best validation weighted MCC (validation boxes of the training seeds)
        val = e.get("validation", {}).get("val_threshold_weighted_mcc") if "patches" in e else None
        val_text = "-" if val is None else f"{val:.3f}"
        # the frame-input rows of the segmenters that read monthly medians by default
        frames = e.get("budget", {}).get("inputs") == "frames" and name not in MONTHLY_MODELS
        shown = f"{name} (frames)" if frames and "(" not in name else name
        lines.append(
            f"| {shown} | **{p['weighted_mcc']:.3f}** | {m['weighted_mcc']:.3f} ± {s['weighted_mcc']:.3f} "
            f"| {p['mcc_full']:.3f} / {p['mcc_mask']:.3f} | {p['f1_full']:.3f} / {p['f1_mask']:.3f} "
            f"| {p['acc_full']:.3f} / {p['acc_mask']:.3f} | {small['mcc']:.3f} / {small['recall']:.3f} "
            f"| {large['mcc']:.3f} / {large['recall']:.3f} | {e['map_10m']['weighted_mcc']:.3f} "
            f"| {e['gain_2p5m_over_10m']['weighted_mcc']:+.3f} | {e['n_parameters']:,} "
            f"| {e['serialized_bytes'] / 1e6:.2f} | {budget_text} | {train_text} | {val_text} "
            f"| {e['inference_seconds_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_epochs(text: str | None, budget_s: float = TRAIN_BUDGET_S) -> dict[str, int]:
    caps = epoch_caps(budget_s)
    for part in (text or "").split(","):
        if part.strip():
            name, _, value = part.partition("=")
            if name.strip() not in caps:
                raise ValueError(f"--epochs names {name.strip()!r}, not a deep model")
            caps[name.strip()] = int(value)
    return caps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_box_arguments(parser, DEFAULT_DATA, "training box indices (deep / parcel models hold one out)")
    parser.set_defaults(size=200)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", help="override caps, e.g. 'spinet=2,lstm=4'")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the deep models")
    parser.add_argument(
        "--budget-s", type=float, default=TRAIN_BUDGET_S, help="training budget of each deep model (s)"
    )
    parser.add_argument(
        "--inputs", choices=("frames", "monthly"), help="deep.inputs (default: the config's, monthly)"
    )
    parser.add_argument(
        "--tta", choices=("none", "flips", "dihedral"), help="predict.tta (default: the config's, dihedral)"
    )
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows of --output")
    parser.add_argument(
        "--patience", type=int, help="deep models' early-stopping patience (default: the recipe's 8)"
    )
    parser.add_argument("--suffix", default="", help="appended to the row names, e.g. ' (monthly)'")
    parser.add_argument("--reuse-models", action="store_true", help="keep models trained by an earlier run")
    parser.add_argument(
        "--train-dir", type=Path, help="folder of training box folders (instead of simulating)"
    )
    parser.add_argument("--holdout-dir", type=Path, help="folder of hold-out box folders (with --train-dir)")
    parser.add_argument("--per-seed", type=int, default=2, help="hold-out boxes box-000.. of each seed")
    parser.add_argument("--holdout-limit", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--table", type=Path, default=TABLE)
    args, machine, calibration = start_run(parser, argv, LOGGER)
    try:
        epochs = parse_epochs(args.epochs, args.budget_s)
    except ValueError as error:
        parser.error(str(error))
    if args.train_dir is not None:  # boxes of several simulator seeds, e.g. made by bench_seasonal.py
        data = args.data.resolve()
        simulate_s = None
        train_boxes = sorted(args.train_dir.iterdir())  # links named seedN-box-XXX: unique names
        holdout = sorted(args.holdout_dir.iterdir())[: args.holdout_limit]
        holdout = [p for p in holdout if p.name.endswith(tuple(f"box-{i:03d}" for i in range(args.per_seed)))]
    else:
        data, _, simulate_s, train_boxes, holdout = split_boxes_from_args(parser, args)
    sizes = holdout_references(holdout)

    entries: dict[str, dict] = {}
    for model_name in args.models:
        name = model_name + args.suffix
        config = model_config(model_name, epochs, args.threads, args.inputs, args.patience, args.tta)
        card = (
            None
            if model_name == "ndvi-rule"
            else train(model_name, train_boxes, config, data, args.reuse_models, name)
        )
        model = model_name if card is None else data / "models" / name
        run = data / "runs" / name
        timing, rows = predict_and_score(name, model, config, holdout, run)
        threshold = config.predict.cutoff if card is None else card.get("threshold", config.predict.cutoff)
        extra = diagnostics(run, sizes, threshold)
        entries[name] = entry_of(name, card, timing, rows, extra)
        if model_name in DEEP_MODELS:
            entries[name]["budget"] = {
                "train_budget_s": args.budget_s,
                "max_epochs": epochs[model_name],
                "patience": config.deep.trainer.patience,
                "inputs": config.deep.inputs,
                "tta": config.predict.tta,
                "threads": args.threads,
            }
        partial = data / "partial_entries.json"  # what a killed run leaves: one entry per finished model
        partial.write_text(json.dumps(entries, indent=1, default=str), encoding="utf-8")
        LOGGER.info(
            "%s: pooled wMCC %.3f (10 m map %.3f), small / large parcels MCC %.3f / %.3f",
            name,
            entries[name]["pooled"]["weighted_mcc"],
            extra["map_10m"]["weighted_mcc"],
            extra["parcel_size"]["small"]["mcc"],
            extra["parcel_size"]["large"]["mcc"],
        )

    if args.merge and args.output.is_file():
        earlier = json.loads(args.output.read_text(encoding="utf-8"))["models"]
        entries = {**{k: v for k, v in earlier.items() if k not in entries}, **entries}
    ranking = sorted(entries, key=lambda n: entries[n]["pooled"]["weighted_mcc"], reverse=True)
    small_total = sum(int(((s > 0) & (s < 400)).sum()) for s in sizes.values())
    large_total = sum(int((s >= 400).sum()) for s in sizes.values())
    result: dict[str, object] = {
        "benchmark": "every model of the seeds on the same simulated training and hold-out boxes",
        "data": {
            "simulator_seed": args.seed if args.train_dir is None else "see box names (seedN-box-XXX)",
            "size_px": args.size if args.train_dir is None else "250 (bench_seasonal.py boxes)",
            "train_boxes": [b.name for b in train_boxes],
            "holdout_boxes": [b.name for b in holdout],
            "simulate_seconds": simulate_s,
            "parcel_pixels_2p5m": {"small_lt_400": small_total, "large": large_total},
        },
        "cap": {
            "deep_max_epochs": {name: epochs[name] for name in DEEP_MODELS},
            "train_budget_s": args.budget_s,
            "epoch_seconds_first_run": EPOCH_SECONDS,
            "epoch_scale": EPOCH_SCALE,
            "parcel_max_epochs": PARCEL_EPOCHS,
            "why": (
                f"one CPU budget per deep model: about {args.budget_s:.0f} s of training on 2 cores (epochs = "
                "budget / estimated seconds per epoch, 2 to 100; the measured time is train s in the table), "
                "with the CPU recipe (DEEP_RECIPE): 512 random patches per epoch with the 8 dihedral "
                "augmentations, AdamW lr 2e-3 with cosine decay after a 1-epoch warm-up, gradient clipping 1, "
                "class-balanced BCE, best.pt, early stopping (patience "
                f"{'8, the recipe' if args.patience is None else args.patience}), the checkpoint chosen on "
                "the validation weighted MCC of 3 of the 12 training boxes (patches) and the threshold on the "
                "whole validation boxes predicted with predict.tta (rows without 'tta' in their budget: on "
                "the patches, no test-time augmentation). Rows merged from other runs "
                "(--merge) carry their own 'budget'. Seeds: 100+ epochs on GPUs."
            ),
        },
        "config": (
            "MappingConfig defaults except train.model (lightgbm: the seasonal default; lightgbm-seed000: "
            "--config seed000); deep: cpu presets, deep.n_frames 20, patch 100, the recipe above, "
            f"{args.threads} threads, cache_boxes 6; predict threshold: each model's own (card), 1 worker"
        ),
        "definitions": {
            "parcel_size": (
                "pixels of reference parcels (challenge rasterisation, -2.5 m buffer) with fewer than 400 "
                "(small) or at least 400 (large) 2.5 m pixels; background and NOT_DECLARED pixels excluded; "
                "pooled over the hold-out boxes"
            ),
            "map_10m": (
                "the model's 2.5 m probabilities averaged over each 10 m pixel, nearest-upsampled to 2.5 m, "
                "thresholded at 0.5, scored like the 2.5 m map (pooled)"
            ),
        },
        "reported": list(REPORTED),
        "models": entries,
        "ranking_by_pooled_weighted_mcc": ranking,
        "calibration_s": calibration,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "peak_rss_gb_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "note": (
            "Simulated data, not the challenge boxes. Deep models are far from converged under the CPU "
            "epoch caps: lower bounds of their recipes. Parcel models use the reference parcel outlines. "
            "Timings on a shared 2-core machine: upper bounds."
        ),
    }
    write_results(result, machine, args.output)
    args.table.write_text(markdown_table(entries, ranking), encoding="utf-8")
    print(markdown_table(entries, ranking))
    print(f"results in {args.output} and {args.table}")
    return result


if __name__ == "__main__":
    main()

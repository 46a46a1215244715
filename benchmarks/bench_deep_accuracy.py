"""Benchmark: hold-out accuracy of GCNN, U-Net-B and U-Net-TC beside the rule, LightGBM and RF.

The data, boxes and scoring of ``bench_accuracy.py``: seed ``--seed`` boxes 0..N-1 (500 x 500 px
at 10 m, 19..48 frames) in ``--data`` (simulated only if missing), training boxes ``--train``
(default 0-5), hold-out boxes ``--holdout`` (default 6-9). Each deep model is trained with
:func:`s2agri.workflows.train_deep.train_deep_model` on the six training boxes (``deep.val_fraction``
0.1 holds one of them out for validation / early stopping; the script checks that it is one), with
CPU default widths (GCNN: the paper's 7,937 parameters; U-Nets: ``base_width`` 16, 20 frames),
predicted on the hold-out boxes with :func:`s2agri.workflows.predict.predict_boxes` and scored
with :func:`s2agri.workflows.evaluate.evaluate_boxes`. The rows of ``ndvi-rule``, ``lightgbm`` and
``random-forest`` are merged from ``results/accuracy.json`` (same boxes and scoring; the script
refuses a file with other boxes).

Deviation from seed 000's recipe (100 epochs, patience 12, which would take hours per model on 2
CPU cores): ``--max-epochs`` (per model, e.g. ``gcnn=6,unet-b=4,unet-tc=6``, or one number) and
``--patience`` cap the training; ``deep.trainer.num_threads`` = ``--threads``; ``deep.cache_boxes``
= 6 keeps every box in memory (changes no result, only avoids reloading boxes each epoch). The
cap is recorded in the JSON and the model cards (``stop_reason`` "max_epochs" = capped).
``--gcnn-frames N`` adds a row ``gcnn-fN``: the GCNN with ``deep.n_frames`` = N (not seed 000's recipe,
which pools all frames of each box). ``--reuse-models`` keeps the models of an earlier run with the
same boxes and config (it still predicts and scores the hold-out boxes again).

    python benchmarks/bench_deep_accuracy.py [--max-epochs gcnn=6,unet-b=4,unet-tc=6] [--gcnn-frames 20]
        [--reuse-models]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
from pathlib import Path

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

LOGGER = logging.getLogger("bench_deep_accuracy")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "deep_accuracy.json"
BASELINE = HERE / "results" / "accuracy.json"
DEFAULT_DATA = Path("/tmp/s2agri-bench-accuracy")
MODELS = ("gcnn", "unet-b", "unet-tc")
#: Epoch caps chosen from one measured epoch per model (see results/deep_accuracy.json, "cap").
DEFAULT_MAX_EPOCHS = "gcnn=6,unet-b=4,unet-tc=6"
#: The probe the caps were chosen from: 2 epochs per model, same data and settings, load average 1-5.
EPOCH_PROBE_SECONDS = {"gcnn": [70.8, 90.7], "unet-b": [155.0, 104.2], "unet-tc": [56.1, 56.3]}
SEED_RECIPE = {"max_epochs": 100, "patience": 12}


def parse_caps(text: str, models: list[str]) -> dict[str, int]:
    """``"8"`` -> the same cap for every model; ``"gcnn=8,unet-b=4"`` -> per model (all needed)."""
    if "=" not in text:
        return dict.fromkeys(models, int(text))
    caps = {name.strip(): int(value) for name, _, value in (p.partition("=") for p in text.split(","))}
    missing = [m for m in models if m not in caps]
    if missing:
        raise ValueError(f"--max-epochs names no cap for {', '.join(missing)}")
    return {m: caps[m] for m in models}


def deep_config(  # type: ignore[no-untyped-def]
    name: str, max_epochs: int, patience: int, threads: int, val_fraction: float, n_frames: int | None = None
):
    from s2agri.workflows.config import MappingConfig

    # n_frames None: every frame for the GCNN (seed 000's recipe), the default 20 for the U-Nets
    frames = (
        {"n_frames": n_frames} if n_frames is not None else ({"all_frames": True} if name == "gcnn" else {})
    )
    return MappingConfig.model_validate(
        {
            "train": {"model": name},
            "deep": {
                **frames,
                "val_fraction": val_fraction,
                "cache_boxes": 6,
                "trainer": {"max_epochs": max_epochs, "patience": patience, "num_threads": threads},
            },
        }
    )


def deep_entry(name: str, card: dict, timing: dict, rows: list[dict], folder: Path) -> dict:
    entry = score_entry(name, card, timing, rows)
    metrics = folder / "training" / "metrics.csv"
    epoch_seconds = []
    if metrics.is_file():
        lines = metrics.read_text().splitlines()
        column = lines[0].split(",").index("epoch_seconds")
        epoch_seconds = [round(float(line.split(",")[column]), 1) for line in lines[1:]]
    entry.update(
        {
            "fit_seconds": card["train_seconds"],
            "train_wall_seconds": card.get("train_wall_seconds"),
            "epochs_run": card["epochs"],
            "epoch_seconds": epoch_seconds,
            "best_epoch": card["best_epoch"],
            "stop_reason": card["stop_reason"],
            "max_epochs": card["config"]["deep"]["trainer"]["max_epochs"],
            "patience": card["config"]["deep"]["trainer"]["patience"],
            "validation_boxes": card["validation_boxes"],
            "training_boxes": card["training_boxes"],
            "patches": card["patches"],
            "n_frames": card["n_frames"],
            "model_kwargs": card["model_kwargs"],
            "validation_best_epoch": card["validation"],
            "model_reused_from_earlier_run": bool(card.get("reused", False)),
        }
    )
    return entry


def baseline_entries(path: Path, train: list[str], holdout: list[str]) -> dict[str, dict]:
    """The rule / LightGBM / RF entries of ``bench_accuracy.py``'s results (same boxes required)."""
    if not path.is_file():
        LOGGER.warning("%s missing: no baseline rows (run bench_accuracy.py)", path)
        return {}
    baseline = json.loads(path.read_text())
    if baseline["data"]["holdout_boxes"] != holdout or baseline["data"]["train_boxes"] != train:
        raise SystemExit(f"{path} was measured on other boxes: run bench_accuracy.py with the same boxes")
    return {name: {**entry, "source": path.name} for name, entry in baseline["models"].items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_box_arguments(parser, DEFAULT_DATA, "training box indices (one is held out for validation)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--max-epochs", default=DEFAULT_MAX_EPOCHS, help="'N' or 'gcnn=N,unet-b=N,...'")
    parser.add_argument("--patience", type=int, default=3, help="early-stopping patience (seed: 12)")
    parser.add_argument("--threads", type=int, default=2, help="deep.trainer.num_threads (fit and predict)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="deep.val_fraction (0.1: 1 of 6)")
    parser.add_argument(
        "--gcnn-frames",
        type=int,
        nargs="*",
        default=[],
        help="extra GCNN rows 'gcnn-fN' with deep.n_frames = N (fixed frames; the gcnn cap)",
    )
    parser.add_argument("--reuse-models", action="store_true", help="keep models trained by an earlier run")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="bench_accuracy.py results")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args, machine, calibration = start_run(parser, argv, LOGGER)
    try:
        caps = parse_caps(args.max_epochs, [*args.models, *(["gcnn"] if args.gcnn_frames else [])])
    except ValueError as error:
        parser.error(str(error))

    data, _, simulate_s, train_boxes, holdout = split_boxes_from_args(parser, args)
    entries = baseline_entries(args.baseline, [b.name for b in train_boxes], [b.name for b in holdout])

    from s2agri.workflows.train_deep import train_deep_model

    variants = [(name, name, None) for name in args.models]
    variants += [(f"gcnn-f{n}", "gcnn", n) for n in args.gcnn_frames]
    for name, model, n_frames in variants:
        config = deep_config(model, caps[model], args.patience, args.threads, args.val_fraction, n_frames)
        folder = data / "models" / name
        card = train_or_reuse(name, train_boxes, config, folder, args.reuse_models, train_deep_model)
        if len(card["validation_boxes"]) != 1:
            raise SystemExit(f"{name}: {len(card['validation_boxes'])} validation boxes, expected 1")
        LOGGER.info(
            "%s: %d epochs (%s), best %s, validation %s",
            name, card["epochs"], card["stop_reason"], card["best_epoch"], card["validation_boxes"],
        )  # fmt: skip
        timing, rows = predict_and_score(name, folder, config, holdout, data / "runs" / name)
        entries[name] = deep_entry(name, card, timing, rows, folder)
        LOGGER.info("%s pooled: %s", name, {k: round(v, 3) for k, v in entries[name]["pooled"].items()})

    ranking = sorted(entries, key=lambda n: entries[n]["pooled"]["weighted_mcc"], reverse=True)
    result: dict[str, object] = {
        "benchmark": "hold-out accuracy of the deep models beside the per-pixel models, full simulated boxes",
        "data": {
            "simulator_seed": args.seed,
            "size_px": args.size,
            "train_boxes": [b.name for b in train_boxes],
            "holdout_boxes": [b.name for b in holdout],
            "simulate_seconds": simulate_s,
            "box_facts": "see accuracy.json",
        },
        "cap": {
            "max_epochs": caps,
            "patience": args.patience,
            "seed_recipe": SEED_RECIPE,
            "why": (
                "CPU budget: the whole script within ~35 min on a shared 2-core machine; caps chosen "
                "from a 2-epoch probe per model (epoch_probe_seconds; ~25 min of training in all, the rest "
                "for normaliser fits and the 12 hold-out predictions)"
            ),
            "epoch_probe_seconds": EPOCH_PROBE_SECONDS,
        },
        "config": (
            "MappingConfig defaults except train.model, deep.trainer.max_epochs / patience (cap), "
            f"deep.trainer.num_threads {args.threads}, deep.cache_boxes 6, deep.val_fraction "
            f"{args.val_fraction}; predict threshold 0.5, 1 worker"
        ),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "reported": list(REPORTED),
        "models": entries,
        "ranking_by_pooled_weighted_mcc": ranking,
        "calibration_s": calibration,
        "peak_rss_gb_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "note": (
            "Scores are on simulated data, not the challenge boxes. Deep models are trained under an "
            "epoch cap far below seed 000's recipe: they are not converged, so their scores are lower "
            "bounds of what the recipe would give. Baseline rows come from accuracy.json (an earlier run, "
            "same boxes and scoring). Timings were taken on a shared 2-core machine: upper bounds."
        ),
    }
    write_results(result, machine, args.output)

    print(
        f"{'model':<15}{'wMCC pooled':>12}{'wMCC mean±std':>17}{'MCC mask':>10}{'F1 mask':>9}"
        f"{'params':>11}{'MB':>8}{'s/box':>7}{'train s':>9}{'epochs':>8}"
    )
    for name in ranking:
        e = entries[name]
        p, m, s = e["pooled"], e["mean"], e["std"]
        epochs = f"{e['epochs_run']}/{e['max_epochs']}" if "epochs_run" in e else "-"
        train_s = e.get("train_wall_seconds") or e.get("fit_seconds") or 0.0
        print(
            f"{name:<15}{p['weighted_mcc']:>12.3f}{m['weighted_mcc']:>10.3f} ± {s['weighted_mcc']:.3f}"
            f"{p['mcc_mask']:>10.3f}{p['f1_mask']:>9.3f}{e['n_parameters']:>11,}"
            f"{e['serialized_bytes'] / 1e6:>8.2f}{e['inference_seconds_mean']:>7.1f}{train_s:>9.0f}{epochs:>8}"
        )
    print(f"train {', '.join(b.name for b in train_boxes)}; hold-out {', '.join(b.name for b in holdout)}")
    print(f"results in {args.output}")
    return result


if __name__ == "__main__":
    main()

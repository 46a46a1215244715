"""Benchmark: test-time augmentation of trained deep segmenters, accuracy against speed.

For each model folder (written by ``s2agri train``, e.g. by ``bench_models.py``) and each
``predict.tta`` mode (none, flips, dihedral), the same run:

1. predicts the model's own validation boxes (its card's ``validation_boxes``, looked up in
   ``--train-dir``) whole, as ``s2agri predict`` does, and picks the decision threshold of the
   training grid (``THRESHOLDS``) with the best pooled weighted MCC: the mode's validation score;
2. predicts the hold-out boxes (``--holdout-dir``, other simulator seeds) at that threshold: the
   reported score, never used to choose anything;
3. times the prediction per box (loading excluded) on ``--threads`` torch threads.

Models that declare ``dihedral_equivariant`` (per-pixel models, the GCNN) get one pass in every mode
(``passes``): their rows show that the modes then give the same map.

The default mode (``dihedral``) was chosen on step 1. Writes ``results/tta.json`` and
``results/tta.md``.

    python benchmarks/bench_tta.py --models /tmp/s2agri-bench-tta/models/unet-tc* \
        --train-dir /tmp/s2agri-bench-seasonal/boxes/train --holdout-dir /tmp/s2agri-bench-seasonal/boxes/holdout
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from _common import start_run, write_results

LOGGER = logging.getLogger("bench_tta")
RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("none", "flips", "dihedral")


def score_mode(folder: Path, mode: str, val: list[Path], holdout: list[Path], threads: int) -> dict:
    """Validation threshold scan and hold-out scores of the model in ``folder`` with ``tta=mode``."""
    from s2agri.models.inference import TTA_TRANSFORMS
    from s2agri.models.trainer_config import THRESHOLDS
    from s2agri.tasks.masks import ValidMaskTask
    from s2agri.workflows.config import MappingConfig
    from s2agri.workflows.model_store import load_trained
    from s2agri.workflows.train_deep import validate_on_boxes

    trained = load_trained(folder)
    stored = MappingConfig.model_validate(trained.card["config"], context={"stored": True})
    predict = stored.predict.model_copy(update={"tta": mode, "threshold": None})
    trainer = stored.deep.trainer.model_copy(update={"num_threads": threads})
    config = stored.model_copy(
        update={"predict": predict, "deep": stored.deep.model_copy(update={"trainer": trainer})}
    )
    valid = ValidMaskTask(
        clp_threshold=config.masks.clp_threshold, scl_invalid_classes=config.masks.scl_invalid_classes
    )
    args = (trained.model, trained.normaliser, trained.n_frames)
    on_val = validate_on_boxes(*args, val, config, valid, trained.months, THRESHOLDS)
    at = config.model_copy(update={"predict": predict.model_copy(update={"threshold": on_val["threshold"]})})
    on_holdout = validate_on_boxes(*args, holdout, at, valid, trained.months)
    LOGGER.info(
        "%s, tta %s: validation wMCC %.4f at %.2f, hold-out %.4f, %.2f s/box",
        folder.name,
        mode,
        on_val["validation_box_scores"]["weighted_mcc"],
        on_val["threshold"],
        on_holdout["validation_box_scores"]["weighted_mcc"],
        on_holdout["inference_seconds_per_box"],
    )
    equivariant = getattr(trained.model, "dihedral_equivariant", False)
    return {
        "passes": 1 if equivariant else len(TTA_TRANSFORMS[mode]),
        "threshold": on_val["threshold"],
        "validation": on_val["validation_box_scores"],
        "validation_by_threshold": on_val["weighted_mcc_by_threshold"],
        "holdout": on_holdout["validation_box_scores"],
        "seconds_per_box": on_holdout["inference_seconds_per_box"],
    }


def markdown_table(entries: dict[str, dict[str, dict]]) -> str:
    """One row per model and mode: validation / hold-out weighted MCC, threshold, seconds per box."""
    lines = [
        "| model | tta | passes | threshold (val) | val wMCC | hold-out wMCC | hold-out MCC mask | s/box | vs none |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, modes in entries.items():
        base = modes["none"]["seconds_per_box"]
        for mode, row in modes.items():
            lines.append(
                f"| {model} | {mode} | {row['passes']} | {row['threshold']:.2f} | "
                f"{row['validation']['weighted_mcc']:.3f} | **{row['holdout']['weighted_mcc']:.3f}** | "
                f"{row['holdout']['mcc_mask']:.3f} | {row['seconds_per_box']:.2f} | "
                f"{row['seconds_per_box'] / base:.1f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model folders (s2agri train)")
    parser.add_argument("--train-dir", type=Path, required=True, help="folder holding the validation boxes")
    parser.add_argument("--holdout-dir", type=Path, required=True, help="folder of hold-out box folders")
    parser.add_argument("--per-seed", type=int, default=2, help="hold-out boxes box-000.. of each seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "tta.json")
    parser.add_argument("--table", type=Path, default=RESULTS / "tta.md")
    args, machine, calibration = start_run(parser, argv, LOGGER)

    import json

    holdout = [
        box
        for box in sorted(args.holdout_dir.iterdir())
        if box.name.endswith(tuple(f"box-{i:03d}" for i in range(args.per_seed)))
    ]
    entries: dict[str, dict[str, dict]] = {}
    for folder in args.models:
        card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
        val = [args.train_dir / name for name in card["validation_boxes"]]
        name = f"{card['model']} ({'monthly' if card.get('months') else 'frames'})"
        entries[name] = {mode: score_mode(folder, mode, val, holdout, args.threads) for mode in MODES}
    result: dict[str, object] = {
        "benchmark": "test-time augmentation of deep segmenters: validation-chosen threshold, hold-out score, speed",
        "validation": "each model's own validation boxes (seeds 0 and 1); the threshold of each mode is chosen there",
        "holdout_boxes": [box.name for box in holdout],
        "threads": args.threads,
        "models": entries,
        "calibration_s": calibration,
    }
    write_results(result, machine, args.output)
    table = markdown_table(entries)
    args.table.write_text(table, encoding="utf-8")
    print(table)
    return result


if __name__ == "__main__":
    main()

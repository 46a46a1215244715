"""Benchmark: the default pixel model (crop-calendar features) against a plain seasonal-median LightGBM
and seed 000's recipe, trained and scored in the same run on boxes of several simulator seeds.

Data (simulated into ``--data``, reused by later runs): training boxes 0..N-1 of each ``--train-seeds``
seed and hold-out boxes 0..M-1 of each ``--holdout-seeds`` seed, ``--size`` px at 10 m. The hold-out
seeds are other simulated landscapes, never used to develop or tune the features (that was done on
seeds 0 and 1 with other boxes held out). Models, all LightGBM through ``s2agri train`` / ``predict``:

* ``default``: the :class:`MappingConfig` defaults (seasonal features, weight-map sampling, threshold
  chosen on held-out training boxes, ``refine`` prediction);
* ``seasonal-median``: the reference of the map-quality issue, a plain LightGBM on cloud-masked
  seasonal medians (4 windows of the season, 12 bands + NDVI, plus the count of valid observations),
  balanced unweighted samples, threshold 0.5, probability at 10 m bicubic x4;
* ``seed000``: seed 000's recipe (5x5 statistics averaged over frames, the recipe file
  ``recipes/seed000.yaml``), the former default;
* the same three with other prediction modes where speed and accuracy pull apart (``--modes``).

Writes ``results/seasonal.json`` and ``results/seasonal.md``.

    python benchmarks/bench_seasonal.py [--data /tmp/s2agri-bench-seasonal] [--size 250]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from _common import predict_and_score, score_entry, start_run, write_results

LOGGER = logging.getLogger("bench_seasonal")
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path("/tmp/s2agri-bench-seasonal")

REFERENCE = {
    "features": {
        "kind": "seasonal",
        "n_windows": 4,
        "indices": ["NDVI"],
        "percentiles": [],
        "neighbourhood": 0,
    },
    "train": {"sample_weights": False, "threshold_boxes": 0.0},
    "predict": {"threshold": 0.5, "mode": "proba-upsample"},
}


def simulate(folder: Path, boxes: int, size: int, seed: int) -> list[Path]:
    """``boxes`` simulated boxes of ``seed`` in ``folder`` (reused when present with the same parameters)."""
    from s2agri.tasks import contract
    from s2agri.workflows.simulate import simulate_region

    params = {"boxes": boxes, "size": size, "seed": seed}
    stamp = folder / "sim.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        shutil.rmtree(folder, ignore_errors=True)
        LOGGER.info("simulating %d boxes of %d px, seed %d", boxes, size, seed)
        simulate_region(folder, boxes, size, seed, contract.MIN_FRAMES, contract.MAX_FRAMES)
        stamp.write_text(json.dumps(params))
    return sorted((folder / "eopatches").iterdir())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=250)
    parser.add_argument("--train-seeds", default="0,1")
    parser.add_argument("--train-boxes", type=int, default=6)
    parser.add_argument("--holdout-seeds", default="2,3")
    parser.add_argument("--holdout-boxes", type=int, default=4)
    parser.add_argument("--modes", default="proba-upsample,feature-upsample", help="extra prediction modes")
    args, machine, calibration = start_run(parser, argv, LOGGER)

    from s2agri.tasks.objects import OBJECT_KEYS
    from s2agri.workflows.config import MappingConfig, load_config
    from s2agri.workflows.train import train_model

    data = args.data.resolve()
    train_seeds = [int(s) for s in args.train_seeds.split(",")]
    holdout_seeds = [int(s) for s in args.holdout_seeds.split(",")]
    if set(train_seeds) & set(holdout_seeds):
        parser.error("training and hold-out seeds overlap")
    train, holdout = [], []
    for seed in train_seeds:
        train += simulate(data / f"seed{seed}", args.train_boxes, args.size, seed)
    for seed in holdout_seeds:
        holdout += simulate(data / f"seed{seed}", args.holdout_boxes, args.size, seed)
    # box names repeat across seeds: link every box under a unique name
    links = data / "boxes"
    shutil.rmtree(links, ignore_errors=True)
    for group, boxes in (("train", train), ("holdout", holdout)):
        (links / group).mkdir(parents=True)
        for box in boxes:
            (links / group / f"{box.parent.parent.name}-{box.name}").symlink_to(box)
    train = sorted((links / "train").iterdir())
    holdout = sorted((links / "holdout").iterdir())

    recipes = Path(__file__).resolve().parents[1] / "workflows" / "recipes"
    configs = {
        "default": MappingConfig(),
        "seasonal-median": MappingConfig.model_validate(REFERENCE),
        "seed000": load_config(recipes / "seed000.yaml"),
    }
    entries, cards = [], {}
    for name, config in configs.items():
        folder = data / "models" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        card = train_model(train, config, folder)
        card["train_wall_seconds"] = round(time.perf_counter() - start, 2)
        cards[name] = card
        LOGGER.info(
            "%s: trained in %.1f s, threshold %s", name, card["train_wall_seconds"], card["threshold"]
        )
        modes = [config.predict.mode] + [m for m in args.modes.split(",") if m and m != config.predict.mode]
        for mode in modes:
            label = name if mode == config.predict.mode else f"{name} ({mode})"
            mode_config = config.model_copy(
                update={"predict": config.predict.model_copy(update={"mode": mode})}
            )
            timing, rows = predict_and_score(label, folder, mode_config, holdout, data / "runs" / label)
            entry = score_entry(label, card, timing, rows)
            pooled_row = next(r for r in rows if r["box"] == "pooled")
            entry["pooled_objects"] = {k: pooled_row[k] for k in OBJECT_KEYS}
            if name == "default" and mode == config.predict.mode:
                entry["pooled_objects_components"] = components_objects(data / "runs" / label, holdout)
                entry["instances_seconds_per_box"] = instance_seconds(data / "runs" / label, holdout)
            entry.update(
                {
                    "recipe": name,
                    "predict_mode": mode,
                    "threshold": card["threshold"],
                    "threshold_selection": card.get("threshold_selection", {}),
                    "n_features": len(card["feature_names"]),
                    "train_wall_seconds": card["train_wall_seconds"],
                }
            )
            entries.append(entry)
            LOGGER.info("%s: pooled weighted MCC %.3f", label, entry["pooled"]["weighted_mcc"])

    pooled = {e["model"]: e["pooled"]["weighted_mcc"] for e in entries}
    result = {
        "benchmark": "default pixel model vs a seasonal-median LightGBM and seed 000's recipe",
        "data": {
            "size_px": args.size,
            "train": {"seeds": train_seeds, "boxes_per_seed": args.train_boxes},
            "holdout": {"seeds": holdout_seeds, "boxes_per_seed": args.holdout_boxes},
            "note": "hold-out seeds are landscapes never used while developing the features",
        },
        "configs": {name: config.model_dump(mode="json") for name, config in configs.items()},
        "reference_workload_seconds": round(calibration, 3),
        "models": entries,
        "summary": {
            "pooled_weighted_mcc": pooled,
            "default_minus_seasonal_median": round(pooled["default"] - pooled["seasonal-median"], 4),
            "default_minus_seed000": round(pooled["default"] - pooled["seed000"], 4),
        },
    }
    write_results(result, machine, RESULTS / "seasonal.json")
    (RESULTS / "seasonal.md").write_text(markdown(result), encoding="utf-8")
    LOGGER.info("wrote %s", RESULTS / "seasonal.json")


def components_objects(run: Path, holdout: list[Path]) -> dict:
    """Pooled object scores of the same predicted masks traced as 4-connected components (no watershed)."""
    from eolearn.core import EOPatch

    from s2agri.tasks.objects import ObjectCounts, object_scores
    from s2agri.tasks.prediction import PRED_CULTIVATED
    from s2agri.tasks.vectorise import PARCELS_PRED, VectoriseTask
    from s2agri.workflows.evaluate import box_object_counts, load_for_scoring

    total = ObjectCounts()
    for box in holdout:
        patch = load_for_scoring(run / "eopatches" / box.name)
        traced = EOPatch(bbox=patch.bbox)
        traced[PRED_CULTIVATED] = patch[PRED_CULTIVATED]
        traced.meta_info.update(patch.meta_info)
        patch[PARCELS_PRED] = VectoriseTask(proba_feature=None, instances_feature=None).execute(traced)[
            PARCELS_PRED
        ]
        total += box_object_counts(patch)
    return object_scores(total)


def instance_seconds(run: Path, holdout: list[Path]) -> float:
    """Mean seconds of the watershed instance step per box (on the saved masks)."""
    from eolearn.core import EOPatch

    from s2agri.tasks.instances import watershed_instances
    from s2agri.tasks.prediction import PRED_CULTIVATED

    seconds = []
    for box in holdout:
        mask = EOPatch.load(str(run / "eopatches" / box.name), features=[PRED_CULTIVATED])[PRED_CULTIVATED]
        start = time.perf_counter()
        watershed_instances(mask[..., 0])
        seconds.append(time.perf_counter() - start)
    return round(sum(seconds) / len(seconds), 3)


def markdown(result: dict) -> str:
    """The results as a markdown table."""
    data = result["data"]
    lines = [
        "# Default pixel model vs seasonal-median LightGBM (same run)",
        "",
        f"Trained on {data['train']['boxes_per_seed']} boxes of each simulator seed {data['train']['seeds']}, "
        f"scored on {data['holdout']['boxes_per_seed']} boxes of each hold-out seed {data['holdout']['seeds']} "
        f"({data['size_px']} px at 10 m, 2.5 m reference). Pooled weighted MCC over the hold-out boxes; "
        "seconds are the whole per-box prediction workflow on 2 shared cores.",
        "",
        "| model | features | threshold | predict mode | pooled weighted MCC | mean ± std over boxes | "
        "MCC mask | object F1 (P / R) | s / box |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["models"]:
        o = e["pooled_objects"]
        lines.append(
            f"| {e['model']} | {e['n_features']} | {e['threshold']:.2f} | {e['predict_mode']} | "
            f"{e['pooled']['weighted_mcc']:.3f} | {e['mean']['weighted_mcc']:.3f} ± {e['std']['weighted_mcc']:.3f} | "
            f"{e['pooled']['mcc_mask']:.3f} | {o['object_f1']:.3f} ({o['object_precision']:.3f} / "
            f"{o['object_recall']:.3f}) | {e['inference_seconds_mean']:.1f} |"
        )
    default = next(e for e in result["models"] if e["model"] == "default")
    plain = default["pooled_objects_components"]
    lines += [
        "",
        f"Parcels of the default map: object F1 at IoU >= 0.5 **{default['pooled_objects']['object_f1']:.3f}** with "
        f"the watershed instances ({default['instances_seconds_per_box']:.2f} s per box), "
        f"{plain['object_f1']:.3f} when the same mask is traced as 4-connected components; median matched IoU "
        f"{default['pooled_objects']['median_iou']:.3f}, over- / under-segmentation "
        f"{default['pooled_objects']['over_segmentation']:.3f} / {default['pooled_objects']['under_segmentation']:.3f} "
        f"over {int(default['pooled_objects']['n_reference'])} reference fields of >= 0.1 ha.",
    ]
    summary = result["summary"]
    lines += [
        "",
        f"Default minus seasonal-median reference: **{summary['default_minus_seasonal_median']:+.3f}**; "
        f"default minus seed 000's recipe: {summary['default_minus_seed000']:+.3f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

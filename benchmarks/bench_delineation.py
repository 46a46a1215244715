"""Benchmark: field parcels of a delineation model (extent + boundary + distance) vs binary models.

Same data as ``bench_seasonal.py`` (simulated 250 px boxes; training seeds 0 and 1, hold-out seeds 2
and 3, never used while developing). Three models, trained by the functions behind ``s2agri train``:

* ``lightgbm``: the default pixel model; parcels by the boundary-free watershed of its mask;
* ``unet-tc``: the binary U-Net-TC; parcels by the same watershed;
* ``unet-delineation``: U-Net-TC with extent, boundary and distance heads; parcels by the watershed
  of its predicted surface (:func:`s2agri.tasks.instances.delineation_instances`).

Both U-Nets get the CPU recipe and the same epoch cap (``--epochs``, the cap ``bench_models.py``
gives U-Net-TC for its budget). ``vectorise.surface_h`` of the delineation model is chosen on
its **validation boxes** (training seeds), by object F1, never on the hold-out boxes. Reported per
model, pooled over the hold-out boxes: weighted MCC at 2.5 m and object precision / recall / F1 at
IoU >= 0.5, median matched IoU, over- / under-segmentation; plus the seconds of the delineation
post-processing (instances + polygons) on a full 500 x 500 px box (2000 x 2000 px at 2.5 m, the
hold-out predictions tiled 2 x 2).

    python benchmarks/bench_delineation.py [--reuse-models] [--epochs 21]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from _common import predict_and_score, score_entry, start_run, train_or_reuse, write_results
from bench_models import EPOCHS, model_config
from bench_seasonal import simulate

LOGGER = logging.getLogger("bench_delineation")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "delineation.json"
TABLE = HERE / "results" / "delineation.md"
DEFAULT_DATA = Path("/tmp/s2agri-bench-seasonal")
MODELS = ("lightgbm", "unet-tc", "unet-delineation")
SURFACE_H = (0.1, 0.15, 0.2, 0.25, 0.3)


def boxes(data: Path, size: int) -> tuple[list[Path], list[Path]]:
    """Training boxes (seeds 0, 1: 6 each) and hold-out boxes (seeds 2, 3: 4 each), linked by unique names."""
    groups = {"train": [], "holdout": []}
    for group, seeds, count in (("train", (0, 1), 6), ("holdout", (2, 3), 4)):
        for seed in seeds:
            groups[group] += [(seed, b) for b in simulate(data / f"seed{seed}", count, size, seed)]
    links = data / "boxes"
    shutil.rmtree(links, ignore_errors=True)
    for group, items in groups.items():
        (links / group).mkdir(parents=True)
        for seed, box in items:
            (links / group / f"seed{seed}-{box.name}").symlink_to(box)
    return sorted((links / "train").iterdir()), sorted((links / "holdout").iterdir())


def config_of(name: str, epochs: int, threads: int, params: dict | None = None):  # type: ignore[no-untyped-def]
    from s2agri.workflows.config import MappingConfig

    if name == "lightgbm":
        return MappingConfig()
    config = model_config(name, {name: epochs}, threads)
    if params and name == "unet-delineation":
        config = config.model_copy(update={"train": config.train.model_copy(update={"params": params})})
    return config


def object_scores_at(run: Path, names: list[str], surface_h: float, boundaries: bool = True) -> dict:
    """Pooled object scores of the saved predictions in ``run`` re-split with ``surface_h`` (or, with
    ``boundaries=False``, by the boundary-free watershed of the extent mask)."""
    from eolearn.core import EOPatch

    from s2agri.tasks.instances import InstanceSegmentationTask
    from s2agri.tasks.objects import ObjectCounts, object_scores
    from s2agri.tasks.prediction import PRED_BOUNDARY, PRED_DISTANCE
    from s2agri.tasks.vectorise import VectoriseTask
    from s2agri.workflows.evaluate import box_object_counts

    total = ObjectCounts()
    for name in names:
        patch = EOPatch.load(str(run / "eopatches" / name))
        if not boundaries:
            del patch[PRED_BOUNDARY], patch[PRED_DISTANCE]
        patch = InstanceSegmentationTask(surface_h=surface_h).execute(patch)
        patch = VectoriseTask().execute(patch)
        total += box_object_counts(patch)
    return object_scores(total)


def full_box_seconds(run: Path, name: str, repeats: int = 2) -> dict:
    """Seconds of instances + polygons on a full box: the prediction of ``name`` tiled 2 x 2."""
    from eolearn.core import EOPatch
    from sentinelhub import BBox

    from s2agri.tasks.instances import InstanceSegmentationTask
    from s2agri.tasks.prediction import PRED_BOUNDARY, PRED_CULTIVATED, PRED_DISTANCE, PRED_PROBA
    from s2agri.tasks.vectorise import VectoriseTask

    patch = EOPatch.load(str(run / "eopatches" / name))
    (minx, miny, maxx, maxy), crs = patch.bbox, patch.bbox.crs
    big = EOPatch(bbox=BBox((minx, maxy - 2 * (maxy - miny), minx + 2 * (maxx - minx), maxy), crs=crs))
    for feature in (PRED_PROBA, PRED_CULTIVATED, PRED_BOUNDARY, PRED_DISTANCE):
        if feature in patch:
            big[feature] = np.tile(patch[feature], (2, 2, 1))
    big.meta_info.update(patch.meta_info)
    timings: dict[str, list[float]] = {"instances": [], "polygons": []}
    for _ in range(repeats):
        start = time.perf_counter()
        split = InstanceSegmentationTask().execute(big.copy())
        middle = time.perf_counter()
        VectoriseTask().execute(split)
        timings["instances"].append(middle - start)
        timings["polygons"].append(time.perf_counter() - middle)
    best = {k: round(min(v), 3) for k, v in timings.items()}
    return {
        "shape_2p5m": list(big[PRED_CULTIVATED].shape[:2]),
        **best,
        "total": round(best["instances"] + best["polygons"], 3),
    }


def markdown(result: dict) -> str:
    data = result["data"]
    lines = [
        "# Field delineation: one polygon per field",
        "",
        f"Trained on {len(data['train_boxes'])} boxes of simulator seeds 0 and 1, scored on "
        f"{len(data['holdout_boxes'])} boxes of hold-out seeds 2 and 3 ({data['size_px']} px at 10 m). "
        f"Both U-Nets: CPU recipe, at most {result['epochs']} epochs on 2 cores. Objects: reference fields "
        ">= 0.1 ha vs predicted polygons, matched at IoU >= 0.5.",
        "",
        "| model | parcels by | pooled wMCC | object F1 | precision | recall | median IoU | over / under seg. | train s (epochs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["models"]:
        o = e["pooled_objects"]
        epochs = f" ({e['epochs']})" if e.get("epochs") else ""
        lines.append(
            f"| {e['model']} | {e['instances']} | {e['pooled']['weighted_mcc']:.3f} | **{o['object_f1']:.3f}** | "
            f"{o['object_precision']:.3f} | {o['object_recall']:.3f} | {o['median_iou']:.3f} | "
            f"{o['over_segmentation']:.3f} / {o['under_segmentation']:.3f} | {e['train_seconds']:.0f}{epochs} |"
        )
    tuning = result["surface_h_selection"]
    timing = result["full_box_postprocessing_seconds"]
    delineation = next(e for e in result["models"] if e["model"] == "unet-delineation")
    plain = delineation["pooled_objects_mask_watershed"]
    lines += [
        "",
        f"The delineation model's own extent split by the mask watershed instead of its boundaries: object "
        f"F1 {plain['object_f1']:.3f} (precision {plain['object_precision']:.3f}, recall "
        f"{plain['object_recall']:.3f}).",
        "",
        f"`vectorise.surface_h` {tuning['chosen']} was chosen on the delineation model's validation boxes "
        f"({', '.join(tuning['boxes'])}): object F1 "
        + ", ".join(f"{t}: {f:.3f}" for t, f in tuning["object_f1"].items())
        + ".",
        "",
        f"Post-processing of a full box ({timing['shape_2p5m'][0]} x {timing['shape_2p5m'][1]} px at 2.5 m): "
        f"instances {timing['instances']:.2f} s + polygons {timing['polygons']:.2f} s = **{timing['total']:.2f} s**.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=EPOCHS["unet-tc"], help="epoch cap of both U-Nets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse-models", action="store_true")
    parser.add_argument("--delineation-params", type=json.loads, default={}, help="train.params, as JSON")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--table", type=Path, default=TABLE)
    args, machine, calibration = start_run(parser, argv, LOGGER)

    from s2agri.tasks.objects import OBJECT_KEYS
    from s2agri.workflows.train import train_model
    from s2agri.workflows.train_deep import train_deep_model

    data = args.data.resolve()
    train, holdout = boxes(data, args.size)
    entries, selection = [], {}
    for name in MODELS:
        config = config_of(name, args.epochs, args.threads, args.delineation_params)
        train_fn = train_model if name == "lightgbm" else train_deep_model
        folder = data / "delineation-models" / name
        card = train_or_reuse(name, train, config, folder, args.reuse_models, train_fn)
        if name == "unet-delineation":  # surface depth chosen on the validation boxes (training seeds)
            val_names = card["validation_boxes"]
            val_run = data / "delineation-runs" / "validation"
            predict_and_score(
                name, folder, config, [data / "boxes" / "train" / n for n in val_names], val_run
            )
            scores = {t: object_scores_at(val_run, val_names, t)["object_f1"] for t in SURFACE_H}
            chosen = max(scores, key=lambda t: (scores[t], -abs(t - 0.15)))
            selection = {"boxes": val_names, "object_f1": scores, "chosen": chosen}
            LOGGER.info("surface_h %.2f chosen on %s: %s", chosen, val_names, scores)
            config = config.model_copy(
                update={"vectorise": config.vectorise.model_copy(update={"surface_h": chosen})}
            )
        run = data / "delineation-runs" / name
        timing, rows = predict_and_score(name, folder, config, holdout, run)
        entry = score_entry(name, card, timing, rows)
        pooled = next(r for r in rows if r["box"] == "pooled")
        if name == "unet-delineation":
            names = [b.name for b in holdout]
            entry["pooled_objects_mask_watershed"] = object_scores_at(run, names, 0.5, boundaries=False)
        entry.update(
            {
                "pooled_objects": {k: pooled[k] for k in OBJECT_KEYS},
                "instances": "predicted boundaries" if name == "unet-delineation" else "mask watershed",
                "train_seconds": card["train_seconds"],
                "epochs": card.get("epochs"),
                "best_epoch": card.get("best_epoch"),
                "learning_curve": card.get("learning_curve"),
            }
        )
        entries.append(entry)
        LOGGER.info(
            "%s: wMCC %.3f, object F1 %.3f",
            name,
            entry["pooled"]["weighted_mcc"],
            entry["pooled_objects"]["object_f1"],
        )
    postprocessing = full_box_seconds(data / "delineation-runs" / "unet-delineation", holdout[0].name)
    result = {
        "benchmark": "field delineation model vs binary models: pixel and object scores on hold-out boxes",
        "data": {
            "size_px": args.size,
            "train_boxes": [b.name for b in train],
            "holdout_boxes": [b.name for b in holdout],
        },
        "epochs": args.epochs,
        "threads": args.threads,
        "reference_workload_seconds": round(calibration, 3),
        "models": entries,
        "surface_h_selection": selection,
        "full_box_postprocessing_seconds": postprocessing,
    }
    write_results(result, machine, args.output)
    args.table.write_text(markdown(result), encoding="utf-8")
    LOGGER.info("wrote %s and %s", args.output, args.table)
    return result


if __name__ == "__main__":
    main()

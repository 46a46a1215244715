"""Scores of predicted boxes against their reference, and quicklooks (seed 000, Fig. 2 colours)."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import shapely
from eolearn.core import EOPatch, FeatureType
from matplotlib import patheffects
from matplotlib.artist import Artist
from matplotlib.layout_engine import ConstrainedLayoutEngine

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.export import atomic_write_text, target_grid
from s2agri.tasks.metrics import SCORE_KEYS, box_confusions, pool_confusions, scores, summarise
from s2agri.tasks.objects import (
    OBJECT_KEYS,
    ObjectCounts,
    object_counts,
    object_scores,
    predicted_objects,
    reference_objects,
)
from s2agri.tasks.prediction import INPUT_KEY, INPUT_RELATIVE_KEY, PRED_CULTIVATED, PRED_MODEL_KEY
from s2agri.tasks.vectorise import PARCELS_PRED
from s2agri.workflows.validate import scan_eopatch

LOGGER = logging.getLogger(__name__)
#: Pixel scores, then object scores of the predicted parcels (s2agri.tasks.objects).
METRIC_KEYS = (*SCORE_KEYS, *OBJECT_KEYS)
ROW_KEYS = ("model", "box", *METRIC_KEYS)
#: Columns of the printed table (the files hold every metric).
TABLE_KEYS = (*SCORE_KEYS, "object_precision", "object_recall", "object_f1", "median_iou")
_TABLE_NAMES = {"object_precision": "obj_prec", "object_recall": "obj_recall", "object_f1": "obj_f1"}


def load_for_scoring(folder: Path) -> EOPatch:
    """Load only what scoring needs; a clear error names a missing feature."""
    features: list[Any] = [contract.CULTIVATED, contract.NOT_DECLARED, PRED_CULTIVATED, FeatureType.META_INFO]
    if PARCELS_PRED in scan_eopatch(folder).features:
        features.append(PARCELS_PRED)
    try:
        return EOPatch.load(str(folder), features=features)
    except (OSError, ValueError, KeyError) as exc:
        raise S2AgriInputError(
            f"{folder} lacks a feature needed for scoring ({' '.join(str(exc).split())}): run predict first "
            "and score only boxes with a reference (CULTIVATED, NOT_DECLARED)"
        ) from exc


def evaluate_boxes(folders: Sequence[Path], model: str | None = None) -> list[dict]:
    """One row per box plus a ``pooled`` row (confusions summed over boxes, as the challenge scores)."""
    rows, confusions, objects = [], [], ObjectCounts()
    for folder in folders:
        patch = load_for_scoring(folder)
        truth, not_declared = patch[contract.CULTIVATED][..., 0], patch[contract.NOT_DECLARED][..., 0]
        conf = box_confusions(truth, patch[PRED_CULTIVATED][..., 0], not_declared)
        confusions.append(conf)
        counts = box_object_counts(patch)
        objects += counts
        name = model or str(patch.meta_info.get(PRED_MODEL_KEY, "unknown"))
        rows.append({"model": name, "box": folder.name, **scores(conf), **object_scores(counts)})
    if rows:
        rows.append(
            {
                "model": rows[0]["model"],
                "box": "pooled",
                **scores(pool_confusions(confusions)),
                **object_scores(objects),
            }
        )
    return rows


def box_object_counts(patch: EOPatch) -> ObjectCounts:
    """Reference fields vs the predicted parcels (PARCELS_PRED; none when the box has no such feature)."""
    truth, not_declared = patch[contract.CULTIVATED][..., 0], patch[contract.NOT_DECLARED][..., 0]
    reference = reference_objects(truth)
    if PARCELS_PRED not in patch:
        return object_counts(reference, np.zeros_like(reference))
    transform, crs = target_grid(patch, truth.shape)
    parcels = patch[PARCELS_PRED]
    if parcels.crs is not None and parcels.crs.to_epsg() != crs.to_epsg():
        parcels = parcels.to_crs(crs.to_wkt())
    predicted = predicted_objects(parcels.geometry.values, transform, truth.shape, not_declared=not_declared)
    return object_counts(reference, predicted)


def summary_rows(rows: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std over boxes (pooled rows excluded), per model."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        per_box = [
            {k: r[k] for k in METRIC_KEYS if k in r}
            for r in rows
            if r["model"] == model and r["box"] != "pooled"
        ]
        out[model] = summarise(per_box)
    return out


def write_metrics(rows: Sequence[dict], json_path: Path, csv_path: Path | None = None) -> None:
    """``metrics.json`` (a list of rows) and optionally the same table as CSV, atomically."""
    atomic_write_text(json_path, json.dumps(list(rows), indent=2) + "\n")
    if csv_path is not None:
        tmp = csv_path.with_name(f".{csv_path.name}.tmp-{os.getpid()}")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROW_KEYS)
            writer.writeheader()
            writer.writerows([{k: row.get(k, "") for k in ROW_KEYS} for row in rows])
        tmp.replace(csv_path)


def format_table(rows: Sequence[dict], *, summary: bool = False) -> str:
    """A fixed-width results table; ``summary`` adds mean and std over boxes per model."""
    header = f"{'model':<16}{'box':<12}" + "".join(f"{_TABLE_NAMES.get(k, k):>13}" for k in TABLE_KEYS)
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['model']:<16}{row['box']:<12}"
            + "".join(f"{row.get(k, float('nan')):>13.3f}" for k in TABLE_KEYS)
        )
    if summary:
        for model, stats in summary_rows(rows).items():
            for stat in ("mean", "std"):
                values = "".join(f"{stats.get(k, {}).get(stat, float('nan')):>13.3f}" for k in TABLE_KEYS)
                lines.append(f"{model:<16}{'box ' + stat:<12}{values}")
    return "\n".join(lines)


def _quicklook_patch(folder: Path) -> EOPatch:
    """The masks of ``folder`` and the bands of the box: its own, else those of the EOPatch it was
    predicted from (``meta_info["input_eopatch"]``, written by the prediction workflow)."""
    masks = [contract.CULTIVATED, contract.NOT_DECLARED, PRED_CULTIVATED]
    if PARCELS_PRED in scan_eopatch(folder).features:
        masks.append(PARCELS_PRED)
    bands = [contract.BANDS, contract.CLM, contract.IS_DATA]
    patch = EOPatch.load(str(folder), features=[*masks, FeatureType.META_INFO])
    candidates = [folder] if contract.BANDS in scan_eopatch(folder).features else []
    if patch.meta_info.get(INPUT_RELATIVE_KEY):  # relative to the run folder, <run>/eopatches/<box>
        candidates.append(folder.resolve().parent.parent / patch.meta_info[INPUT_RELATIVE_KEY])
    if patch.meta_info.get(INPUT_KEY):
        candidates.append(Path(patch.meta_info[INPUT_KEY]))
    source = next((path for path in candidates if path.is_dir()), None)
    if source is None:
        raise S2AgriInputError(
            f"{folder} has no bands and its input EOPatch is gone ({', '.join(map(str, candidates[-2:]))}): "
            "quicklooks need the input bands"
        )
    inputs = EOPatch.load(str(source), features=bands)
    patch.timestamps = inputs.timestamps
    for feature in bands:
        patch[feature] = inputs[feature]
    return patch


#: Quicklook RGB: the median of the clear observations of this part of the season (green crops).
PEAK_SEASON = ("05-15", "08-01")
#: Colours of the prediction panel.
QUICKLOOK_COLOURS = {
    "correct": (0.1, 0.5, 0.1),
    "false positive": (0.9, 0.1, 0.1),
    "false negative": (1.0, 0.85, 0.0),
    "not declared": (0.7, 0.7, 0.7),
}


def peak_season_rgb(patch: EOPatch) -> tuple[np.ndarray, str]:
    """(H, W, 3) reflectance of B04/B03/B02: the per-pixel median of the clear observations of
    :data:`PEAK_SEASON` (all clear observations when none falls in it), and a caption of what it shows."""
    from s2agri.tasks.monthly import masked_median
    from s2agri.tasks.seasonal import window_of_frames

    b = contract.BAND_INDEX
    clear = patch[contract.IS_DATA][..., 0] & (patch[contract.CLM][..., 0] == 0)
    timestamps = patch.get_timestamps()
    frames = np.flatnonzero(window_of_frames(timestamps, 1, *PEAK_SEASON) == 0)
    caption = f"RGB median {PEAK_SEASON[0]}..{PEAK_SEASON[1]}"
    if frames.size == 0 or not clear[frames].any():
        frames, caption = np.arange(len(timestamps)), "RGB median of the season"
    bands = patch[contract.BANDS][frames][..., [b["B04"], b["B03"], b["B02"]]].astype(np.float32)
    rgb, _ = masked_median(bands * np.float32(contract.NORM_FACTOR), clear[frames])
    return np.nan_to_num(rgb, nan=0.0), f"{caption} ({frames.size} frames, 10 m)"


def _scale_bar(ax: plt.Axes, width_px: int, pixel_m: float) -> None:
    """A bar of a round length (about a fifth of the width) in the lower left corner."""
    target = width_px * pixel_m / 5
    length_m = max(v for v in (10, 25, 50, 100, 250, 500, 1000, 2000, 5000) if v <= max(target, 10))
    length_px = length_m / pixel_m
    x0, y0 = width_px * 0.04, width_px * 0.95
    # a black bar in a white halo: readable on the bright map panels and on dark imagery alike
    halo = [patheffects.Stroke(linewidth=7, foreground="white"), patheffects.Normal()]
    ax.plot(
        [x0, x0 + length_px], [y0, y0], color="black", linewidth=4, solid_capstyle="butt", path_effects=halo
    )
    ax.text(x0 + length_px / 2, y0 - width_px * 0.02, f"{length_m:g} m", ha="center", va="bottom",
            fontsize=11, color="black", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})  # fmt: skip


def quicklook(folder: Path, path: Path) -> None:
    """Peak-season RGB, truth, and the prediction (false positives red, false negatives yellow) with the
    outlines of the predicted parcels; a legend and a scale bar."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    patch = _quicklook_patch(folder)
    rgb, caption = peak_season_rgb(patch)
    truth, pred = patch[contract.CULTIVATED][..., 0], patch[PRED_CULTIVATED][..., 0]
    colours = np.ones((*truth.shape, 3))
    colours[truth & pred] = QUICKLOOK_COLOURS["correct"]
    colours[~truth & pred] = QUICKLOOK_COLOURS["false positive"]
    colours[truth & ~pred] = QUICKLOOK_COLOURS["false negative"]
    colours[patch[contract.NOT_DECLARED][..., 0]] = QUICKLOOK_COLOURS["not declared"]
    truth_rgb = np.ones((*truth.shape, 3))
    truth_rgb[truth] = QUICKLOOK_COLOURS["correct"]
    fig, axes = plt.subplots(1, 3, figsize=(19, 7.2), layout="constrained")
    axes[0].imshow(np.clip(rgb * 3.5, 0, 1), interpolation="nearest")
    axes[0].set_title(f"{folder.name}: {caption}", fontsize=13)
    axes[1].imshow(truth_rgb, interpolation="nearest")
    axes[1].set_title("reference: cultivated (2.5 m)", fontsize=13)
    axes[2].imshow(colours, interpolation="nearest")
    model = patch.meta_info.get(PRED_MODEL_KEY, "prediction")
    axes[2].set_title(f"{model}: 2.5 m map and predicted parcels", fontsize=13)
    parcels = patch[PARCELS_PRED] if PARCELS_PRED in patch else None  # noqa: SIM401 (an EOPatch)
    if parcels is not None and len(parcels) and patch.bbox is not None:
        transform, _ = target_grid(patch, truth.shape)
        inverse = ~transform
        for ring in shapely.get_exterior_ring(shapely.get_parts(parcels.geometry.values)):
            x, y = shapely.get_coordinates(ring).T
            col, row = inverse * (x, y)
            axes[2].plot(col - 0.5, row - 0.5, color="black", linewidth=0.4)
    pixel_m = float(contract.TARGET_RESOLUTION_M)
    for ax, scale in zip(axes, (contract.SCALE, 1, 1), strict=True):
        ax.set_axis_off()
        _scale_bar(ax, truth.shape[1] // scale, pixel_m * scale)
    legend: list[Artist] = [
        Patch(facecolor=colour, edgecolor="black", label=name) for name, colour in QUICKLOOK_COLOURS.items()
    ]
    legend.append(Line2D([0], [0], color="black", linewidth=1.5, label="predicted parcel outline"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=12, frameon=False)
    cast(ConstrainedLayoutEngine, fig.get_layout_engine()).set(rect=(0, 0.07, 1, 0.93))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)

"""Parcels as objects: is there one predicted polygon per reference field?

Pixel scores say how much land is right; GIS users also need each field as one polygon. Objects are
compared on the 2.5 m grid of a box:

* **reference objects**: 8-connected components of ``CULTIVATED`` (the challenge's own parcel
  definition for its weight map; rasterisation with a -2.5 m buffer keeps neighbouring fields apart)
  of at least ``min_pixels`` (160 px = 0.1 ha);
* **predicted objects**: the polygons of ``PARCELS_PRED`` (what ``parcels.gpkg`` holds), rasterised
  with one id per polygon (pixel centres inside, as eo-learn's VectorToRasterTask does), of at least
  ``min_pixels``; objects mostly (> 50 %) inside NOT_DECLARED are left out.

Every pair's intersection comes from one ``np.bincount`` over the joint labels. A reference object
and a predicted object **match** when their IoU is >= 0.5 (a one-to-one relation: above 0.5 each
object can match at most one other; ties at exactly 0.5 are resolved greedily, highest IoU first).
Scores: object precision (matched / predicted), recall (matched / reference), F1, the median IoU of
the matches, and Persello & Bruzzone's over- and under-segmentation (mean over reference objects of
``1 - |r ∩ p| / |r|`` and ``1 - |r ∩ p| / |p|`` for the predicted object p overlapping r most; 1 and
0 for a reference object no prediction touches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import rasterio.features
from affine import Affine
from skimage.measure import label

#: 0.1 ha at 2.5 m.
MIN_OBJECT_PIXELS = 160
IOU_THRESHOLD = 0.5
OBJECT_KEYS: tuple[str, ...] = (
    "object_precision",
    "object_recall",
    "object_f1",
    "median_iou",
    "over_segmentation",
    "under_segmentation",
    "n_reference",
    "n_predicted",
)


def _drop_small(labels: np.ndarray, min_pixels: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Relabel ``labels`` 1..K keeping objects of >= ``min_pixels`` (and ``keep[id]`` when given)."""
    sizes = np.bincount(labels.ravel())
    kept = sizes >= min_pixels
    if keep is not None:
        kept &= keep
    kept[0] = False
    new_ids = np.zeros(sizes.size, np.int64)
    new_ids[kept] = np.arange(1, kept.sum() + 1)
    return new_ids[labels]


def reference_objects(cultivated: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS) -> np.ndarray:
    """(H, W) int64 ids 1..K of the 8-connected cultivated components of >= ``min_pixels``; 0 elsewhere."""
    mask = np.asarray(cultivated, dtype=bool)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return _drop_small(label(mask, connectivity=2), min_pixels)


def predicted_objects(
    polygons: object,
    transform: Affine,
    shape: tuple[int, int],
    *,
    not_declared: np.ndarray | None = None,
    min_pixels: int = MIN_OBJECT_PIXELS,
) -> np.ndarray:
    """(H, W) int64 ids 1..K of ``polygons`` (shapely geometries in the grid's CRS) rasterised on the grid
    (later polygons win where they overlap), keeping objects of >= ``min_pixels`` not mostly not-declared."""
    geometries = [g for g in polygons if g is not None and not g.is_empty]  # type: ignore[attr-defined]
    if not geometries:
        return np.zeros(shape, np.int64)
    burnt = rasterio.features.rasterize(
        ((g, i + 1) for i, g in enumerate(geometries)),
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=False,
        dtype="int32",
    ).astype(np.int64)
    keep = None
    if not_declared is not None:
        nd = np.asarray(not_declared, dtype=bool)
        nd = nd[..., 0] if nd.ndim == 3 else nd
        sizes = np.bincount(burnt.ravel(), minlength=len(geometries) + 1)
        in_nd = np.bincount(burnt[nd], minlength=len(geometries) + 1)
        keep = in_nd * 2 <= sizes
    return _drop_small(burnt, min_pixels, keep)


@dataclass
class ObjectCounts:
    """What pooled object scores need from one box (or the sum of boxes)."""

    n_reference: int = 0
    n_predicted: int = 0
    matched: int = 0
    ious: list[float] = field(default_factory=list)
    over_segmentation_sum: float = 0.0
    under_segmentation_sum: float = 0.0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(
            self.n_reference + other.n_reference,
            self.n_predicted + other.n_predicted,
            self.matched + other.matched,
            self.ious + other.ious,
            self.over_segmentation_sum + other.over_segmentation_sum,
            self.under_segmentation_sum + other.under_segmentation_sum,
        )


def object_counts(
    reference: np.ndarray, predicted: np.ndarray, iou_threshold: float = IOU_THRESHOLD
) -> ObjectCounts:
    """Match the objects of two label images of the same shape (0 = background); see the module docstring."""
    reference = np.asarray(reference, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if reference.shape != predicted.shape:
        raise ValueError(
            f"reference {reference.shape} and predicted {predicted.shape} labels differ in shape"
        )
    n_ref, n_pred = int(reference.max(initial=0)), int(predicted.max(initial=0))
    counts = ObjectCounts(n_reference=n_ref, n_predicted=n_pred)
    if n_ref == 0:
        return counts
    ref_sizes = np.bincount(reference.ravel(), minlength=n_ref + 1).astype(np.float64)
    pred_sizes = np.bincount(predicted.ravel(), minlength=n_pred + 1).astype(np.float64)
    both = (reference > 0) & (predicted > 0)
    joint = np.bincount(
        reference[both] * (n_pred + 1) + predicted[both], minlength=(n_ref + 1) * (n_pred + 1)
    )
    pairs = np.flatnonzero(joint)
    r, p = np.divmod(pairs, n_pred + 1)
    inter = joint[pairs].astype(np.float64)
    iou = inter / (ref_sizes[r] + pred_sizes[p] - inter)

    # greedy one-to-one matching, highest IoU first
    order = np.argsort(-iou, kind="stable")
    used_r, used_p = np.zeros(n_ref + 1, bool), np.zeros(n_pred + 1, bool)
    for k in order[iou[order] >= iou_threshold]:
        if not used_r[r[k]] and not used_p[p[k]]:
            used_r[r[k]] = used_p[p[k]] = True
            counts.matched += 1
            counts.ious.append(float(iou[k]))

    # over/under-segmentation w.r.t. the predicted object overlapping each reference object most
    best_inter = np.zeros(n_ref + 1)
    best_pred_size = np.ones(n_ref + 1)
    by_inter = np.lexsort((-inter, r))  # per reference object, largest intersection first
    first = np.ones(by_inter.size, bool)
    first[1:] = r[by_inter][1:] != r[by_inter][:-1]
    chosen = by_inter[first]
    best_inter[r[chosen]] = inter[chosen]
    best_pred_size[r[chosen]] = pred_sizes[p[chosen]]
    touched = np.zeros(n_ref + 1, bool)
    touched[r[chosen]] = True
    over = 1.0 - best_inter[1:] / ref_sizes[1:]
    under = np.where(touched[1:], 1.0 - best_inter[1:] / best_pred_size[1:], 0.0)
    counts.over_segmentation_sum = float(over.sum())
    counts.under_segmentation_sum = float(under.sum())
    return counts


def object_scores(counts: ObjectCounts) -> dict[str, float]:
    """The :data:`OBJECT_KEYS` of ``counts`` (NaN where undefined: no object, no match)."""
    precision = counts.matched / counts.n_predicted if counts.n_predicted else float("nan")
    recall = counts.matched / counts.n_reference if counts.n_reference else float("nan")
    f1 = (
        2 * counts.matched / (counts.n_predicted + counts.n_reference)
        if counts.n_predicted + counts.n_reference
        else float("nan")
    )
    n = counts.n_reference
    return {
        "object_precision": precision,
        "object_recall": recall,
        "object_f1": f1,
        "median_iou": float(np.median(counts.ious)) if counts.ious else float("nan"),
        "over_segmentation": counts.over_segmentation_sum / n if n else float("nan"),
        "under_segmentation": counts.under_segmentation_sum / n if n else float("nan"),
        "n_reference": float(counts.n_reference),
        "n_predicted": float(counts.n_predicted),
    }

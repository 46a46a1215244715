"""Benchmark: vectorised ``weight_map`` against the starter-pack loop ``reference_weight_map``.

A synthetic 2000 x 2000 CULTIVATED mask at 2.5 m: strips of fields with log-normal heights
and widths, shrunk by one pixel on each side (like the -2.5 m buffer of the rasterisation),
about half kept as cultivated, so neighbouring parcels 2 px apart have overlapping rings.
The reference costs O(parcels x pixels); when its estimate for the full map exceeds
``--reference-budget`` seconds it is timed on crops only and the full-map time is
extrapolated from the per-parcel-per-pixel rate of the largest crop. Writes ``results/weight_map.json``.

    python benchmarks/bench_weight_map.py [--size 2000] [--crop 500 1000] [--reference-budget 120]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import skimage
from skimage.measure import label

from s2agri.tasks.weights import reference_weight_map, weight_map

LOGGER = logging.getLogger("bench_weight_map")
RESULTS = Path(__file__).resolve().parent / "results" / "weight_map.json"


def field_mask(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) CULTIVATED mask of field strips and a sparse NOT_DECLARED mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=bool)
    not_declared = np.zeros((size, size), dtype=bool)
    top = 0
    while top < size:
        height = int(np.clip(rng.lognormal(np.log(22), 0.6), 3, 300))
        left = 0
        while left < size:
            width = int(np.clip(rng.lognormal(np.log(18), 0.9), 3, 400))
            draw = rng.random()
            target = mask if draw < 0.5 else not_declared if draw < 0.53 else None
            if target is not None:
                target[top + 1 : top + height - 1, left + 1 : left + width - 1] = True
            left += width
        top += height
    return mask, not_declared


def best_of(func: Callable[[], object], repeat: int) -> float:
    """Fastest wall-clock seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def machine_info() -> dict[str, object]:
    return {
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit_image": skimage.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument(
        "--crop", type=int, nargs="+", default=[500, 1000], help="crop sizes for the reference"
    )
    parser.add_argument(
        "--reference-budget", type=float, default=120.0, help="seconds for a full reference run"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    mask, not_declared = field_mask(args.size)
    counts = np.bincount(label(mask).ravel())[1:]
    LOGGER.info(
        "%d x %d mask: %d parcels (%d < 400 px)", args.size, args.size, counts.size, (counts < 400).sum()
    )
    fast_full = best_of(lambda: weight_map(mask, not_declared), args.repeat)
    LOGGER.info("weight_map full map: %.3f s", fast_full)

    crops = []
    for size in sorted(set(args.crop)):
        crop_mask, crop_nd = mask[:size, :size], not_declared[:size, :size]
        n_parcels = int(label(crop_mask).max())
        fast = best_of(lambda m=crop_mask, nd=crop_nd: weight_map(m, nd), args.repeat)
        start = time.perf_counter()
        reference = reference_weight_map(crop_mask, crop_nd)
        slow = time.perf_counter() - start
        crops.append(
            {
                "size": size,
                "n_parcels": n_parcels,
                "weight_map_s": fast,
                "reference_weight_map_s": slow,
                "speedup": slow / fast,
                "reference_s_per_parcel_pixel": slow / (n_parcels * crop_mask.size),
                "identical": bool(np.array_equal(reference, weight_map(crop_mask, crop_nd))),
            }
        )
        LOGGER.info("crop %d: %d parcels, weight_map %.4f s, reference %.2f s", size, n_parcels, fast, slow)
    rate = crops[-1]["reference_s_per_parcel_pixel"]  # from the largest crop
    ref_full_estimate = rate * counts.size * mask.size
    LOGGER.info("reference full-map estimate: %.0f s", ref_full_estimate)

    ref_full = None
    full_equal = None
    if ref_full_estimate <= args.reference_budget:
        start = time.perf_counter()
        ref_full_map = reference_weight_map(mask, not_declared)
        ref_full = time.perf_counter() - start
        full_equal = bool(np.array_equal(ref_full_map, weight_map(mask, not_declared)))

    result: dict[str, object] = {
        "map": {
            "size": args.size,
            "n_parcels": int(counts.size),
            "n_parcels_lt_400px": int((counts < 400).sum()),
            "median_parcel_px": float(np.median(counts)),
            "cultivated_fraction": float(mask.mean()),
            "not_declared_fraction": float(not_declared.mean()),
        },
        "weight_map_s": {"full": fast_full, "repeat": args.repeat, "stat": "min"},
        "reference_weight_map_s": {
            "full": ref_full,
            "full_measured": ref_full is not None,
            "full_estimate": ref_full_estimate,
            "estimate_from_crop": crops[-1]["size"],
        },
        "speedup_full": (ref_full if ref_full is not None else ref_full_estimate) / fast_full,
        "speedup_full_is_estimate": ref_full is None,
        "weight_map_mpx_per_s": mask.size / fast_full / 1e6,
        "identical_to_reference_full": full_equal,
        "crops": crops,
        "machine": machine_info(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    ref_text = (
        f"{ref_full:.1f} s measured" if ref_full is not None else f"~{ref_full_estimate:.0f} s estimated"
    )
    print(f"map {args.size}x{args.size}: {counts.size} parcels ({(counts < 400).sum()} < 400 px)")
    print(
        f"full map: weight_map {fast_full:.3f} s, reference {ref_text}, speedup x{result['speedup_full']:.0f}"
    )
    for c in crops:
        print(
            f"crop {c['size']}x{c['size']} ({c['n_parcels']} parcels): weight_map {c['weight_map_s']:.4f} s, "
            f"reference {c['reference_weight_map_s']:.2f} s, speedup x{c['speedup']:.0f}, "
            f"identical {c['identical']}"
        )
    print(f"results in {args.output}")
    return result


if __name__ == "__main__":
    main()

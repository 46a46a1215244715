"""Benchmark: simulate one full challenge box (500 x 500 px at 10 m, T = 40) on this machine.

Targets (issue "Foundation"): <= 30 s (simulation and reference rasterisation; eo-learn's
gzipped save is reported apart) and <= 3 GB peak RSS on 2 cores. Each measurement runs in a
fresh process so that peak RSS belongs to that run alone. A fixed numpy workload timed in the
same run calibrates machine speed (``ratio_to_calibration``), so results from other machines
compare as ratios.

Usage: python benchmarks/bench_simulator.py [--size 500] [--frames 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from _common import calibration_seconds

RESULTS = Path(__file__).parent / "results"

_CHILD = r"""
import json, resource, sys, tempfile, time, warnings
warnings.filterwarnings("ignore")
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.tasks.sources.simulator import BoxSimulator, box_bbox
size, frames, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
sim = BoxSimulator(box_bbox(3, size), seed=1, frames_min=frames, frames_max=frames)
t_landscape = time.perf_counter() - t0
patch = sim.eopatch(threads=threads)
t_sim = time.perf_counter() - t0
patch = RasteriseReferenceTask().execute(patch)
t_ref = time.perf_counter() - t0
with tempfile.TemporaryDirectory() as tmp:
    patch.save(tmp + "/box")
t_all = time.perf_counter() - t0
print(json.dumps({
    "landscape_s": t_landscape, "simulate_s": t_sim, "with_reference_s": t_ref, "with_save_s": t_all,
    "frames": len(patch.timestamps), "polygons": len(sim.polygons),
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
}))
"""


def run_child(size: int, frames: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(size), str(frames), str(threads)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    calibration = calibration_seconds()
    runs = {
        threads: [run_child(args.size, args.frames, threads) for _ in range(args.repeats)]
        for threads in (1, 2)
    }
    best = {threads: min(rs, key=lambda r: r["with_reference_s"]) for threads, rs in runs.items()}
    result = {
        "benchmark": "simulate one box",
        "size_px": args.size,
        "frames": args.frames,
        "best_of": args.repeats,
        "threads_1": best[1],
        "threads_2": best[2],
        "speedup_2_threads": best[1]["simulate_s"] / best[2]["simulate_s"],
        "calibration_s": calibration,
        "ratio_to_calibration": best[2]["with_reference_s"] / calibration,
        "target": {
            "seconds": 30.0,
            "peak_rss_gb": 3.0,
            "measured": "simulate + rasterise reference, in memory",
        },
        "meets_target": best[2]["with_reference_s"] <= 30.0 and best[2]["peak_rss_gb"] <= 3.0,
        "load_average_1min_at_end": os.getloadavg()[0],
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "simulator.json").write_text(json.dumps(result, indent=2) + "\n")
    b = best[2]
    print(
        f"simulate {args.size}px T={b['frames']}: {b['simulate_s']:.1f} s simulate, {b['with_reference_s']:.1f} s "
        f"with reference, {b['with_save_s']:.1f} s with the gzipped EOPatch save, peak RSS {b['peak_rss_gb']:.2f} GB (2 threads); 1 thread {best[1]['simulate_s']:.1f} s; "
        f"target <= 30 s, <= 3 GB: {'met' if result['meets_target'] else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

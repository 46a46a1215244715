"""Helpers shared by the benchmark scripts: logging, the same-run reference workload, machine facts."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

#: Packages whose versions every results file records.
PACKAGES = ("numpy", "numba", "lightgbm", "scikit-learn", "eo-learn", "rasterio", "torch")


def quiet_logging(level: int = logging.INFO) -> None:
    """INFO on the console: eo-learn's EOExecutor lowers the root logger to DEBUG for its log files."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    for name in ("fiona", "pyogrio", "rasterio", "numba", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR)


def calibration_seconds() -> float:
    """A fixed numpy workload (float32 matmuls and element-wise ops): the same-run reference."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((1500, 1500), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(10):
        b = a @ a
        a = np.tanh(b / b.max()).astype(np.float32)
    return time.perf_counter() - start


def machine_info() -> dict[str, object]:
    """CPU count, load, Python and package versions, platform."""
    info: dict[str, object] = {
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_1min_before": os.getloadavg()[0],
        "python": sys.version.split()[0],
    }
    for package in PACKAGES:
        try:
            info[package.replace("-", "_")] = version(package)
        except Exception:  # not installed
            info[package.replace("-", "_")] = None
    info["platform"] = platform.platform()
    info["processor"] = platform.processor() or platform.machine()
    return info


def git_state() -> dict[str, object]:
    """HEAD and the files modified in the working tree (results of a dirty tree are of that tree)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.split("\n")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"head": None, "modified": None}
    return {"head": head, "modified": sorted(line[3:] for line in dirty if line.strip())}


def ensure_data(data: Path, boxes: int, size: int, seed: int) -> tuple[list[Path], float | None]:
    """``boxes`` simulated boxes in ``data/sim`` (simulated unless present with the same parameters)."""
    from s2agri.tasks import contract
    from s2agri.workflows.simulate import simulate_region

    sim = data / "sim"
    params = {
        "boxes": boxes,
        "size": size,
        "seed": seed,
        "frames_min": contract.MIN_FRAMES,
        "frames_max": contract.MAX_FRAMES,
    }
    stamp = data / "sim.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params and (sim / "eopatches").is_dir():
        logging.getLogger("benchmarks").info("reusing %d simulated boxes in %s", boxes, sim)
        seconds = None
    else:
        logging.getLogger("benchmarks").info(
            "simulating %d boxes of %d px (seed %d) into %s", boxes, size, seed, sim
        )
        start = time.perf_counter()
        stamp.unlink(missing_ok=True)
        simulate_region(sim, boxes, size, seed, contract.MIN_FRAMES, contract.MAX_FRAMES)
        seconds = time.perf_counter() - start
        stamp.write_text(json.dumps(params) + "\n")
    return sorted((sim / "eopatches").iterdir()), seconds

"""Helpers shared by the benchmark scripts: logging, the same-run reference workload, machine facts."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
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


def proc_status_gb(pid: int | str = "self") -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process image (or of process ``pid``),
    GB (1e9 bytes)."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024 / 1e9
    return {"rss_gb": out.get("VmRSS", float("nan")), "peak_rss_gb": out.get("VmHWM", float("nan"))}


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def cpu_busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all processes, all cores; /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(
    logger: logging.Logger, threshold: float = 0.6, poll_s: float = 20.0, timeout_s: float = 1500.0
) -> dict[str, object]:
    """Wait until the 1-minute load average is below ``threshold`` (polled every ``poll_s``, at most
    ``timeout_s``), logging each poll; what happened, for the results file."""
    start = time.monotonic()
    first = os.getloadavg()
    while os.getloadavg()[0] >= threshold and time.monotonic() - start < timeout_s:
        logger.info("load average %.2f >= %.2f: waiting %.0f s", os.getloadavg()[0], threshold, poll_s)
        time.sleep(poll_s)
    last = os.getloadavg()
    reached = last[0] < threshold
    if not reached:
        logger.warning("load average still %.2f after %.0f s: measuring anyway", last[0], timeout_s)
    return {
        "threshold": threshold,
        "waited_s": round(time.monotonic() - start, 1),
        "reached": reached,
        "loadavg_at_start": [round(v, 2) for v in first],
        "loadavg_at_end": [round(v, 2) for v in last],
    }


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


def start_run(
    parser: argparse.ArgumentParser, argv: list[str] | None, logger: logging.Logger
) -> tuple[argparse.Namespace, dict[str, object], float]:
    """Parse ``argv``, set up logging, record the machine and time the reference workload."""
    args = parser.parse_args(argv)
    quiet_logging()
    machine = machine_info()
    calibration = calibration_seconds()
    logger.info("reference workload: %.2f s", calibration)
    return args, machine, calibration


def write_results(result: dict[str, object], machine: dict[str, object], output: Path) -> None:
    """Complete ``result`` with the machine, the load average now and the git state; write it as JSON."""
    result.update({"machine": machine, "loadavg_1min_after": os.getloadavg()[0], "git": git_state()})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


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


# --------------------------------------------------------------------------------------------------
# hold-out accuracy (bench_accuracy.py, bench_deep_accuracy.py)

#: Scores reported per model: pooled, mean and std over the hold-out boxes.
REPORTED = ("weighted_mcc", "mcc_full", "mcc_mask", "f1_full", "f1_mask", "acc_full", "acc_mask")


def parse_indices(text: str) -> list[int]:
    """``"0-5"`` or ``"0,2,4"`` (or a mix) -> sorted box indices."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def add_box_arguments(parser: argparse.ArgumentParser, default_data: Path, train_help: str) -> None:
    """``--data --boxes --size --seed --train --holdout``: the simulated boxes and their split."""
    parser.add_argument("--data", type=Path, default=default_data, help="scratch folder, reused")
    parser.add_argument("--boxes", type=int, default=10, help="boxes simulated (0..N-1)")
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", default="0-5", help=train_help)
    parser.add_argument("--holdout", default="6-9", help="hold-out box indices, e.g. 6-9")


def split_boxes_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[Path, list[Path], float | None, list[Path], list[Path]]:
    """``(data, all boxes, simulation seconds, training boxes, hold-out boxes)`` of
    :func:`add_box_arguments`' options; simulates the boxes when missing."""
    train_idx, holdout_idx = parse_indices(args.train), parse_indices(args.holdout)
    if set(train_idx) & set(holdout_idx):
        parser.error(f"--train {args.train} and --holdout {args.holdout} overlap")
    if max(train_idx + holdout_idx) >= args.boxes:
        parser.error(f"box indices must be below --boxes {args.boxes}")
    data = args.data.resolve()
    boxes, simulate_s = ensure_data(data, args.boxes, args.size, args.seed)
    return data, boxes, simulate_s, [boxes[i] for i in train_idx], [boxes[i] for i in holdout_idx]


def train_or_reuse(
    name: str, boxes: list[Path], config: object, folder: Path, reuse: bool, train_fn: Callable
) -> dict:
    """``train_fn(boxes, config, folder)`` into a fresh ``folder``, or the card of an earlier run there
    (``reuse``, same training boxes and config); the card with ``train_wall_seconds``."""
    from s2agri.workflows.model_store import MODEL_CARD

    card_path = folder / MODEL_CARD
    resolved = config.model_dump(mode="json")  # type: ignore[attr-defined]
    if reuse and card_path.is_file():
        card = json.loads(card_path.read_text())
        names = [b.name for b in boxes]
        trained_on = sorted(card.get("training_boxes", []) + card.get("validation_boxes", []))
        if trained_on == names and card.get("config") == resolved:
            logging.getLogger("benchmarks").info("reusing %s from %s", name, folder)
            wall = folder / "bench_wall.json"
            card.update(json.loads(wall.read_text()) if wall.is_file() else {})
            card["reused"] = True
            return card
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    card = train_fn(boxes, config, folder)
    card["train_wall_seconds"] = round(time.perf_counter() - start, 2)
    (folder / "bench_wall.json").write_text(json.dumps({"train_wall_seconds": card["train_wall_seconds"]}))
    logging.getLogger("benchmarks").info(
        "%s: trained in %.1f s wall (fit %.1f s)", name, card["train_wall_seconds"], card["train_seconds"]
    )
    return card


def predict_and_score(
    name: str, model: str | Path, config: object, holdout: list[Path], run: Path
) -> tuple[dict, list[dict]]:
    """Predict ``holdout`` with ``model`` (folder or rule name) into the fresh folder ``run`` with
    :func:`predict_boxes`; per-box seconds and the :func:`evaluate_boxes` rows (pooled last)."""
    from s2agri.workflows.evaluate import evaluate_boxes
    from s2agri.workflows.model_store import load_trained
    from s2agri.workflows.predict import predict_boxes

    trained = load_trained(model)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    start = time.perf_counter()
    summary = predict_boxes(holdout, trained, config, run)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    if summary.failures:
        raise RuntimeError(f"{name}: {summary.failure_line()}")
    logging.getLogger("benchmarks").info("%s: predicted %d boxes in %.1f s", name, len(holdout), wall)
    rows = evaluate_boxes([run / "eopatches" / box.name for box in holdout], model=name)
    return {"seconds_per_box": summary.seconds, "predict_boxes_wall_seconds": round(wall, 2)}, rows


def score_entry(name: str, card: dict | None, timing: dict, rows: list[dict]) -> dict:
    """Pooled / mean / std scores, per-box rows, size of the model and inference seconds of ``name``."""
    from s2agri.workflows.evaluate import summary_rows

    stats = summary_rows(rows)[name]
    seconds = list(timing["seconds_per_box"].values())
    return {
        "model": name,
        "pooled": {k: next(r[k] for r in rows if r["box"] == "pooled") for k in REPORTED},
        "mean": {k: stats[k]["mean"] for k in REPORTED},
        "std": {k: stats[k]["std"] for k in REPORTED},
        "per_box": [r for r in rows if r["box"] != "pooled"],
        "n_parameters": 0 if card is None else card["n_parameters"],
        "serialized_bytes": 0 if card is None else card["serialized_bytes"],
        "inference_seconds_per_box": timing["seconds_per_box"],
        "inference_seconds_mean": sum(seconds) / len(seconds),
        "predict_boxes_wall_seconds": timing["predict_boxes_wall_seconds"],
    }

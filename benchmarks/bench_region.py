"""Benchmark: regional batch mapping (``s2agri run``): throughput with 1 vs 2 workers, Ray vs processes,
merge time and peak memory per worker.

A region of ``--cols`` x ``--rows`` boxes of ``--size-m`` metres (default 4 x 2 boxes of 2500 m =
250 x 250 px) from an AOI polygon written to ``--data`` (EPSG:32633, inside the simulator's world,
x 450000..460000, y 5085000..5090000, inset 100 m from the box edges) is mapped with
:func:`s2agri.workflows.region.run_region` (simulator seed ``--seed``, the contract's frame range).
The model is LightGBM (default config, ``train.params: {n_jobs: 1}``) trained once on simulator boxes
0 and 1 of the same seed and size (x 450000..455000, y 5080000..5082500: outside the region), or the
ndvi-rule (``--model ndvi-rule``).

Every variant runs in a fresh child process (its own session) into a fresh output folder with the same
config but the engine (``processes`` x1 / x2, ``ray`` x2 with a local Ray started by the engine) and
the threads of the worker environment:

* ``default``: the environment as it is. LightGBM predicts with 2 threads per worker whatever
  ``train.params`` says (``LightGBMPixelClassifier.load`` drops ``n_jobs``); numba uses one thread per
  core. ``processes-x2`` deadlocks here: the main process loads the LightGBM model (OpenMP threads of
  GNU libgomp) before eo-learn forks the workers, and a forked worker's own OpenMP region waits forever
  for the parent's pool threads. A variant still running after ``--hang-timeout`` s is examined (CPU
  seconds of its processes over 5 s, kernel wait channel), stopped and reported as such.
* ``processes-x2-forkserver``: the same with the ``forkserver`` start method (the child sets it with
  ``multiprocessing.set_start_method``): workers start clean and import s2agri themselves, the fix
  suggested for the deadlock.
* ``env1``: ``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1`` (plus the OpenBLAS/MKL variables) in the child
  and so in its workers (also avoids the deadlock: no OpenMP pool threads in the parent);
* ``env1-lgbm1``: ``env1`` and LightGBM predicting with the ``num_threads`` stored in its model file
  (1): the fix suggested for ``LightGBMPixelClassifier.load``, applied by the child as a patch.

Ray workers get ``OMP_NUM_THREADS=1`` from Ray itself (recorded by a probe task after the run).

Figures per variant: ``boxes_per_minute`` = boxes / (seconds of the data and predict stages, Ray
start-up taken out) x 60; Ray start-up (``ensure_ray``) apart; per-box seconds of both stages (eo-learn's
own timings) and ``engine_overhead_s`` (stage wall minus per-box seconds / workers: worker start-up and
imports, scheduling, the HTML report); the merge and mosaic stages (``summary.json`` seconds, merge per
box) with the peak RSS of the main process during each (``VmHWM`` reset before the stage). Peak RSS per
worker: forked workers (and the in-process x1 run) append their own ``ru_maxrss`` after each box (eo-learn's
``EOExecutor._execute_workflow`` wrapped before the fork); Ray and forkserver workers are sampled
(``VmHWM`` every 0.25 s). ``RUSAGE_CHILDREN``'s ``ru_maxrss`` is recorded too but is no per-worker
figure: any program the main process starts (eo-learn's report calls Graphviz) counts with the main
process's peak (vfork + exec), even with one worker. Forked workers share the parent's pages at the fork,
which their RSS counts (``main_rss_at_fork_gb``). A last child times
:func:`~s2agri.tasks.merge.trace_eopatch` and :func:`~s2agri.tasks.merge.merge_parcels` alone on the
predicted boxes of the first variant. The outputs of every completed variant are compared with the
first (parcels: attributes and geometries exactly; every GeoTIFF: pixels, transform and CRS).

The run waits until the 1-minute load average is below ``--idle-load`` (every 20 s, at most
``--idle-wait`` s) before anything is measured, and before each variant until the machine's CPU is
quiet (busy share < ``--quiet-share`` over 5 s, at most ``--settle-wait`` s); load averages and the CPU
seconds of other processes during each variant are recorded. The fixed numpy workload of
``_common.calibration_seconds`` is timed at the start and the end. Writes ``results/region.json``.

    python benchmarks/bench_region.py [--data /tmp/s2agri-bench-region] [--variants processes-x1,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import (
    calibration_seconds,
    cpu_busy_seconds,
    ensure_data,
    machine_info,
    proc_status_gb,
    quiet_logging,
    reset_peak_rss,
    train_or_reuse,
    wait_for_idle,
    write_results,
)

LOGGER = logging.getLogger("bench_region")
RESULTS = Path(__file__).resolve().parent / "results" / "region.json"
DEFAULT_DATA = Path("/tmp/s2agri-bench-region")
#: Throughput of 2 workers over 1 (the issue's target).
TARGET_SPEEDUP = 1.7
#: Lower-left corner of the region (m, EPSG:32633): north of the training boxes of the simulator grid.
REGION_ORIGIN = (450000, 5085000)
AOI_INSET_M = 100
THREADS_ONE = {
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class Variant:
    engine: str
    workers: int
    env: dict[str, str] = field(default_factory=dict)
    #: LightGBM predicts with the num_threads of its model file (the suggested fix, patched in)
    lgbm_threads_from_file: bool = False
    #: multiprocessing start method of the processes engine (None: the platform's, fork on Linux)
    start_method: str | None = None


VARIANTS: dict[str, Variant] = {
    "processes-x1": Variant("processes", 1),
    "processes-x2": Variant("processes", 2),
    "processes-x2-forkserver": Variant("processes", 2, start_method="forkserver"),
    "ray-x2": Variant("ray", 2),
    "processes-x1-env1": Variant("processes", 1, THREADS_ONE),
    "processes-x2-env1": Variant("processes", 2, THREADS_ONE),
    "processes-x1-env1-lgbm1": Variant("processes", 1, THREADS_ONE, True),
    "processes-x2-env1-lgbm1": Variant("processes", 2, THREADS_ONE, True),
    "ray-x2-env1-lgbm1": Variant("ray", 2, THREADS_ONE, True),
}
#: (1 worker, 2 workers) pairs whose throughput ratio is the speed-up of a thread setting.
PAIRS = {
    "default": ("processes-x1", "processes-x2"),
    "default-forkserver": ("processes-x1", "processes-x2-forkserver"),
    "env1": ("processes-x1-env1", "processes-x2-env1"),
    "env1-lgbm1": ("processes-x1-env1-lgbm1", "processes-x2-env1-lgbm1"),
}
#: (processes x2, ray x2) pairs: Ray's throughput over that of processes.
RAY_PAIRS = {
    "default-forkserver": ("processes-x2-forkserver", "ray-x2"),
    "env1": ("processes-x2-env1", "ray-x2"),
    "env1-lgbm1": ("processes-x2-env1-lgbm1", "ray-x2-env1-lgbm1"),
}


# --------------------------------------------------------------------------------------------------
# setup (parent, not timed)


def write_aoi(data: Path, cols: int, rows: int, size_m: int) -> Path:
    """A rectangle covering ``cols`` x ``rows`` grid boxes, ``AOI_INSET_M`` inside their outline."""
    import geopandas as gpd
    import shapely

    x0, y0 = REGION_ORIGIN
    polygon = shapely.box(
        x0 + AOI_INSET_M, y0 + AOI_INSET_M, x0 + cols * size_m - AOI_INSET_M, y0 + rows * size_m - AOI_INSET_M
    )
    path = data / "aoi.geojson"
    path.unlink(missing_ok=True)
    gpd.GeoDataFrame({"name": ["bench-region"]}, geometry=[polygon], crs="EPSG:32633").to_file(path)
    return path


def mapping_config(model: str):
    from s2agri.workflows.config import MappingConfig

    train = {"model": "lightgbm", "params": {"n_jobs": 1}} if model == "lightgbm" else {}
    return MappingConfig.model_validate({"train": train})


def ensure_model(data: Path, model: str, size_px: int, seed: int) -> tuple[str, dict | None]:
    """The model path for the region config (trained once on boxes 0-1, reused) and its card."""
    if model == "ndvi-rule":
        return model, None
    from s2agri.workflows.train import train_model

    boxes, _ = ensure_data(data, 2, size_px, seed)
    folder = data / f"model-{model}"
    card = train_or_reuse(model, boxes, mapping_config(model), folder, True, train_model)
    return str(folder), card


# --------------------------------------------------------------------------------------------------
# timed children (fresh processes)


def _patch_lightgbm_threads() -> None:
    """LightGBM predicts with the ``num_threads`` of its model file (the suggested library fix)."""
    from s2agri.models.baselines import LightGBMPixelClassifier

    load = LightGBMPixelClassifier.load.__func__

    def load_with_threads(cls, path):
        model = load(cls, path)
        model.n_jobs = int(model.booster.params.get("num_threads", model.n_jobs))
        return model

    LightGBMPixelClassifier.load = classmethod(load_with_threads)


def _record_worker_peaks(path: Path) -> None:
    """After each box, eo-learn's executor appends ``pid ru_maxrss_kB log_path`` of the process that ran
    it to ``path`` (forked workers inherit the patch; Ray workers import eo-learn afresh and do not)."""
    from eolearn.core import EOExecutor

    execute_workflow = EOExecutor._execute_workflow.__func__

    def measured(cls, data):
        result = execute_workflow(cls, data)
        with open(path, "a") as handle:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            handle.write(f"{os.getpid()} {maxrss} {data.log_path}\n")
        return result

    measured.__name__ = "_execute_workflow"  # bound methods pickle by name (ProcessPoolExecutor)
    EOExecutor._execute_workflow = classmethod(measured)


def _worker_peaks(path: Path) -> dict[str, dict[str, float]]:
    """Per worker process (pid): peak RSS (GB) after its last box, and its boxes per stage."""
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        pid, maxrss, log_path = line.split(" ", 2)
        entry = out.setdefault(pid, {"peak_rss_gb": 0.0})
        entry["peak_rss_gb"] = max(entry["peak_rss_gb"], int(maxrss) / 1e6)
        stage = Path(log_path).parent.name
        entry[stage] = entry.get(stage, 0) + 1
    return out


def _ray_probe() -> dict[str, object]:
    import numba

    return {
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "NUMBA_NUM_THREADS": int(numba.config.NUMBA_NUM_THREADS),
    }


class _PeakSampler(threading.Thread):
    """Polls the peak RSS (VmHWM, monotonic) of the worker processes below this one that are not
    forked from it (Ray workers, forkserver workers): ``ray::*`` processes and grandchildren."""

    def __init__(self, interval_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.peaks, self.done = interval_s, {}, threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.done.wait(self.interval_s):
            for proc in me.children(recursive=True):
                try:
                    name = proc.name()
                    if name.startswith("ray::") or proc.ppid() != me.pid:
                        entry = self.peaks.setdefault(str(proc.pid), {"name": name, "peak_rss_gb": 0.0})
                        peak = proc_status_gb(proc.pid)["peak_rss_gb"]
                        entry["peak_rss_gb"] = max(entry["peak_rss_gb"], peak)
                except (psutil.Error, OSError):
                    continue

    def stop(self) -> dict[str, dict]:
        self.done.set()
        self.join()
        return self.peaks


def child_run(args: argparse.Namespace) -> dict:
    """``run_region`` with each stage instrumented (executor per-box seconds, Ray start-up, merge peak)."""
    from s2agri.workflows import region, runs

    imported = time.perf_counter() - args.t0
    if args.lgbm_threads_from_file:
        _patch_lightgbm_threads()
    if args.start_method:
        import multiprocessing

        multiprocessing.set_start_method(args.start_method, force=True)
    config = region.RegionConfig.model_validate(json.loads(args.config))
    out = Path(args.out)
    peaks_file = out.with_name(f".{out.name}-worker-peaks.txt")
    peaks_file.unlink(missing_ok=True)
    _record_worker_peaks(peaks_file)
    record: dict = {"stages": {}, "ray_start_s": 0.0}

    def timed_ensure_ray(*a, ensure=runs.ensure_ray, **k):
        start = time.perf_counter()
        ensure(*a, **k)
        record["ray_start_s"] += time.perf_counter() - start

    def timed_execute(workflow, kwargs, names, logs, *a, execute=runs.execute, **k):
        before, ray_before = proc_status_gb()["rss_gb"], record["ray_start_s"]
        start = time.perf_counter()
        summary = execute(workflow, kwargs, names, logs, *a, **k)
        record["stages"][Path(logs).name] = {
            "execute_s": time.perf_counter() - start,
            "ray_start_s": record["ray_start_s"] - ray_before,
            "main_rss_before_gb": before,
            "per_box_s": summary.seconds,
            "failures": summary.failures,
        }
        return summary

    def peak_of(name, function):
        def wrapped(*a, **k):
            reset = reset_peak_rss()
            before = proc_status_gb()["rss_gb"]
            result = function(*a, **k)
            record[name] = {"rss_before_gb": before, "peak_rss_gb": proc_status_gb()["peak_rss_gb"]}
            record[name]["peak_reset"] = reset
            return result

        return wrapped

    runs.ensure_ray = timed_ensure_ray
    region.execute = timed_execute
    region.merge_stage = peak_of("merge", region.merge_stage)
    region.mosaic_stage = peak_of("mosaic", region.mosaic_stage)
    sampler = None
    if config.engine.kind == "ray" or args.start_method not in (None, "fork"):
        sampler = _PeakSampler()  # only where workers are not forked from this process
        sampler.start()
    start = time.perf_counter()
    summary = region.run_region(config, out)
    wall = time.perf_counter() - start
    ray_probe = None
    if config.engine.kind == "ray":
        import ray

        ray_probe = ray.get(ray.remote(_ray_probe).remote())
        ray.shutdown()
    return {
        "import_s": imported,
        "run_region_s": wall,
        "summary": summary,
        **record,
        "worker_peaks": _worker_peaks(peaks_file),
        "sampled_worker_peaks": None if sampler is None else sampler.stop(),
        "ray_task_environment": ray_probe,
        "main_ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "children_ru_maxrss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6,
        "numba_threads": _numba_threads(),
    }


def _numba_threads() -> int | None:
    try:
        import numba

        return int(numba.config.NUMBA_NUM_THREADS)
    except ImportError:
        return None


def child_merge(args: argparse.Namespace) -> dict:
    """Load + trace each predicted box, then ``merge_parcels`` alone (``--repeats`` times), with peaks."""
    from eolearn.core import EOPatch

    from s2agri.tasks.merge import merge_parcels, trace_eopatch
    from s2agri.workflows import region

    config = region.RegionConfig.model_validate(json.loads(args.config))
    folders = sorted(p for p in (Path(args.out) / region.PREDICT / "eopatches").iterdir() if p.is_dir())
    reset_peak_rss()
    start = time.perf_counter()
    frames, boxes = [], []
    for folder in folders:
        parcels, box = trace_eopatch(EOPatch.load(str(folder)))
        frames.append(parcels)
        boxes.append(box)
    trace_s = time.perf_counter() - start
    trace_peak = proc_status_gb()
    vectorise = config.mapping.vectorise
    seconds = []
    for _ in range(args.repeats):
        reset_peak_rss()
        before = proc_status_gb()["rss_gb"]
        start = time.perf_counter()
        merged = merge_parcels(
            frames, boxes, tolerance=vectorise.simplify_tolerance_m, min_area_m2=vectorise.min_area_m2
        )
        seconds.append(time.perf_counter() - start)
        peak = proc_status_gb()["peak_rss_gb"]
    return {
        "boxes": len(folders),
        "parts": int(sum(len(f) for f in frames)),
        "parcels": len(merged),
        "across_edges": int(merged["box_ids"].str.contains(",").sum()),
        "load_and_trace_s": trace_s,
        "load_and_trace_per_box_s": trace_s / len(folders),
        "load_and_trace_peak_rss_gb": trace_peak["peak_rss_gb"],
        "merge_parcels_s": seconds,
        "merge_parcels_best_s": min(seconds),
        "merge_parcels_per_box_s": min(seconds) / len(folders),
        "rss_before_merge_gb": before,
        "merge_parcels_peak_rss_gb": peak,
        "merge_parcels_rss_increase_gb": peak - before,
    }


def _stalled(pid: int) -> dict[str, object]:
    """CPU seconds used over 5 s by each process below ``pid`` (all ~0: a deadlock, not slowness)."""
    import psutil

    procs = psutil.Process(pid).children(recursive=True)
    before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
    time.sleep(5)
    out = {}
    for proc in procs:
        try:
            out[str(proc.pid)] = {
                "cpu_s_in_5s": round(sum(proc.cpu_times()[:2]) - before[proc.pid], 3),
                "wchan": Path(f"/proc/{proc.pid}/wchan").read_text(),
                "threads": proc.num_threads(),
            }
        except (psutil.Error, OSError):
            continue
    return out


def run_child(
    mode: str, config: dict, out: Path, env: dict[str, str], extra: list[str], timeout_s: float | None = None
) -> dict:
    """Run a child mode in a fresh process (own session) with ``env`` added; its JSON, wall, loads and
    CPU shares. After ``timeout_s`` the child is examined (:func:`_stalled`), its session killed and
    ``{"timed_out": True, ...}`` returned."""
    import signal

    cmd = [sys.executable, __file__, "--child", mode, "--config", json.dumps(config), "--out", str(out)]
    load_before, busy_before = os.getloadavg(), cpu_busy_seconds()
    own_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stalled = _stalled(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its workers
        _, stderr = proc.communicate()
        LOGGER.warning("child %s still running after %.0f s: killed (%s)", mode, timeout_s, stalled)
        return {
            "timed_out": True,
            "timeout_s": timeout_s,
            "processes_at_timeout": stalled,
            "stderr_tail": stderr[-2000:],
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        }
    wall = time.perf_counter() - start
    own_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(stderr[-6000:])
        raise RuntimeError(f"child {mode} failed with exit code {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    busy = cpu_busy_seconds() - busy_before
    own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    result.update(
        {
            "process_wall_s": wall,
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "machine_busy_cpu_s": round(busy, 1),
            "child_cpu_s": round(own, 1),
            "other_cpu_s": round(busy - own, 1),
            "other_cpu_note": "machine busy CPU seconds minus those of the child's reaped processes "
            "(Ray's and the forkserver's workers are not reaped by the child: for those variants this counts "
            "their CPU as other load)",
        }
    )
    return result


# --------------------------------------------------------------------------------------------------
# comparison of outputs (parent)


def compare_outputs(reference: Path, other: Path) -> dict[str, object]:
    """Parcels (attributes and geometry, exactly) and every GeoTIFF (pixels, transform, CRS) of two runs."""
    import geopandas as gpd
    import numpy as np
    import rasterio

    a = gpd.read_file(reference / "parcels.gpkg", layer="parcels")
    b = gpd.read_file(other / "parcels.gpkg", layer="parcels")
    parcels_equal = bool(
        list(a.columns) == list(b.columns)
        and len(a) == len(b)
        and a.drop(columns="geometry").equals(b.drop(columns="geometry"))
        and (a.geometry.to_wkb() == b.geometry.to_wkb()).all()
    )
    tifs = sorted(p.relative_to(reference) for p in reference.rglob("*.tif"))
    different = []
    for rel in tifs:
        if not (other / rel).is_file():
            different.append(str(rel))
            continue
        with rasterio.open(reference / rel) as x, rasterio.open(other / rel) as y:
            same = x.transform == y.transform and x.crs == y.crs and np.array_equal(x.read(), y.read())
        if not same:
            different.append(str(rel))
    others = sorted(p.relative_to(other) for p in other.rglob("*.tif"))
    different += [str(rel) for rel in others if rel not in tifs]
    return {
        "parcels": len(a),
        "parcels_equal": parcels_equal,
        "geotiffs": len(tifs),
        "geotiffs_different": different,
        "identical": parcels_equal and not different,
    }


# --------------------------------------------------------------------------------------------------


def wait_quiet(share: float, timeout_s: float) -> dict[str, float]:
    """Wait until the machine's busy CPU share over 5 s is below ``share`` (at most ``timeout_s``)."""
    cores = len(os.sched_getaffinity(0))
    start = time.monotonic()
    while True:
        busy = cpu_busy_seconds()
        time.sleep(5)
        measured = (cpu_busy_seconds() - busy) / (5 * cores)
        if measured < share or time.monotonic() - start > timeout_s:
            break
        LOGGER.info("machine CPU %.0f %% busy: waiting", 100 * measured)
    return {"busy_share": round(measured, 3), "waited_s": round(time.monotonic() - start, 1)}


def variant_figures(name: str, result: dict, boxes: int) -> dict[str, object]:
    seconds = result["summary"]["seconds"]
    per_box = seconds["data"] + seconds["predict"] - result["ray_start_s"]
    stage_box = {
        stage: sorted(result["stages"][stage]["per_box_s"].values()) for stage in ("data", "predict")
    }
    variant = VARIANTS[name]
    workers = variant.workers
    sampled = result["sampled_worker_peaks"]
    peaks = [w["peak_rss_gb"] for w in (result["worker_peaks"] if sampled is None else sampled).values()]
    overhead = {
        stage: round(
            info["execute_s"] - info["ray_start_s"] - sum(info["per_box_s"].values()) / min(workers, boxes), 2
        )
        for stage, info in result["stages"].items()
    }
    return {
        **asdict(variant),
        "status": "ok",
        "per_box_stages_s": round(per_box, 2),
        "boxes_per_minute": round(60 * boxes / per_box, 3),
        "ray_start_s": round(result["ray_start_s"], 2),
        "seconds": seconds,
        "merge_s_per_box": round(seconds["merge"] / boxes, 3),
        "merge_peak_rss_gb": result["merge"]["peak_rss_gb"],
        "merge_rss_increase_gb": result["merge"]["peak_rss_gb"] - result["merge"]["rss_before_gb"],
        "mosaic_peak_rss_gb": result["mosaic"]["peak_rss_gb"],
        "worker_peak_rss_gb": max(peaks, default=None),
        "worker_peak_source": "sampled VmHWM"
        if sampled is not None
        else "ru_maxrss in the worker after each box",
        "worker_peak_rss_gb_each": sorted(peaks),
        "main_rss_at_fork_gb": {k: v["main_rss_before_gb"] for k, v in result["stages"].items()},
        "children_ru_maxrss_gb": result["children_ru_maxrss_gb"],
        "main_peak_rss_gb": result["main_ru_maxrss_gb"],
        "engine_overhead_s": overhead,
        "mean_box_seconds": {k: round(sum(v) / len(v), 2) for k, v in stage_box.items()},
        "per_box_seconds": stage_box,
        "loadavg_before": result["loadavg_before"],
        "loadavg_after": result["loadavg_after"],
        "other_cpu_s": result["other_cpu_s"],
    }


def main(argv: list[str] | None = None) -> dict | None:
    t0 = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="scratch folder (model reused)")
    parser.add_argument("--size-m", type=int, default=2500, help="grid box side (10 m pixels)")
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="lightgbm", choices=["lightgbm", "ndvi-rule"])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, first = reference")
    parser.add_argument("--runs", type=int, default=2, help="runs of each variant (best kept)")
    parser.add_argument("--repeats", type=int, default=3, help="merge_parcels repeats")
    parser.add_argument("--idle-load", type=float, default=0.6)
    parser.add_argument("--idle-wait", type=float, default=1500.0, help="seconds at most")
    parser.add_argument("--quiet-share", type=float, default=0.15)
    parser.add_argument("--settle-wait", type=float, default=900.0, help="seconds at most per variant")
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=150.0,
        help="a variant still running then is stopped and reported",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["run", "merge"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--lgbm-threads-from-file", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.t0 = t0
    quiet_logging(logging.WARNING if args.child else logging.INFO)
    if args.child:
        result = child_run(args) if args.child == "run" else child_merge(args)
        print(json.dumps(result, default=str))
        return None
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")

    idle = wait_for_idle(LOGGER, args.idle_load, 20.0, args.idle_wait)
    LOGGER.info("load wait: %s", idle)
    machine = machine_info()
    calibration = calibration_seconds()
    LOGGER.info("reference workload: %.2f s", calibration)
    data = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    size_px = args.size_m // 10
    model, card = ensure_model(data, args.model, size_px, args.seed)
    aoi = write_aoi(data, args.cols, args.rows, args.size_m)
    boxes = args.cols * args.rows
    base = {
        "aoi": str(aoi),
        "grid": {"size_m": args.size_m},
        "source": {"seed": args.seed},
        "model": model,
        "mapping": mapping_config(args.model).model_dump(mode="json"),
        "export": {"formats": ["gpkg"], "mosaics": True},
    }
    runs: dict[str, list[dict]] = {name: [] for name in names}
    stopped: dict[str, dict] = {}
    identical: dict[str, list[dict]] = {}
    reference: str | None = None
    for round_ in range(args.runs):  # round-robin, so a slow spell of the machine hits every variant alike
        for name in names:
            if name in stopped:
                continue
            variant = VARIANTS[name]
            quiet = wait_quiet(args.quiet_share, args.settle_wait)
            out = data / "runs" / name
            shutil.rmtree(out, ignore_errors=True)
            config = base | {"engine": {"kind": variant.engine, "workers": variant.workers}}
            extra = ["--lgbm-threads-from-file"] if variant.lgbm_threads_from_file else []
            extra += ["--start-method", variant.start_method] if variant.start_method else []
            LOGGER.info("%s (round %d): mapping %d boxes (CPU before: %s)", name, round_ + 1, boxes, quiet)
            result = run_child("run", config, out, variant.env, extra, args.hang_timeout)
            result.update(quiet_before=quiet, round=round_ + 1)
            runs[name].append(result)
            if result.get("timed_out"):
                stopped[name] = {**asdict(variant), "status": f"stopped after {args.hang_timeout:.0f} s"}
                continue
            if result["summary"]["done"] != boxes or result["summary"]["failed"]:
                raise RuntimeError(f"{name}: {result['summary']}")
            if reference is None:
                reference = name
            elif name != reference:
                identical.setdefault(name, []).append(compare_outputs(data / "runs" / reference, out))
            fig = variant_figures(name, result, boxes)
            LOGGER.info(
                "%s: %.2f boxes/min (data+predict %.1f s, Ray start %.1f s), merge %.2f s/box, worker peak %s GB",
                name,
                fig["boxes_per_minute"],
                fig["per_box_stages_s"],
                fig["ray_start_s"],
                fig["merge_s_per_box"],
                fig["worker_peak_rss_gb"],
            )

    done = [name for name in names if name not in stopped]
    figures: dict[str, dict] = dict(stopped)
    for name in done:  # the best run of each variant (least disturbed), with all throughputs
        each = [variant_figures(name, result, boxes) for result in runs[name]]
        figures[name] = max(each, key=lambda fig: fig["boxes_per_minute"]) | {
            "boxes_per_minute_runs": [fig["boxes_per_minute"] for fig in each]
        }
    figures = {name: figures[name] for name in names}
    merge = run_child(
        "merge",
        base | {"engine": {}},
        data / "runs" / reference,
        VARIANTS[reference].env,
        ["--repeats", str(args.repeats)],
    )
    calibration_end = calibration_seconds()

    def ratio(pair: tuple[str, str]) -> float | None:
        if not set(pair) <= set(done):
            return None
        return round(figures[pair[1]]["boxes_per_minute"] / figures[pair[0]]["boxes_per_minute"], 3)

    speedups = {key: ratio(pair) for key, pair in PAIRS.items()}
    ray_vs_processes = {key: ratio(pair) for key, pair in RAY_PAIRS.items()}
    best = max((v for v in speedups.values() if v is not None), default=None)
    by_workers = {
        w: max(
            (figures[n] for n in done if VARIANTS[n].workers == w and VARIANTS[n].engine == "processes"),
            key=lambda fig: fig["boxes_per_minute"],
            default=None,
        )
        for w in (1, 2)
    }
    best_vs_best = None
    if by_workers[1] and by_workers[2]:
        best_vs_best = {
            "x1": next(n for n in done if figures[n] is by_workers[1]),
            "x2": next(n for n in done if figures[n] is by_workers[2]),
            "ratio": round(by_workers[2]["boxes_per_minute"] / by_workers[1]["boxes_per_minute"], 3),
        }
    first = runs[reference][0]["summary"]
    result: dict[str, object] = {
        "benchmark": "regional batch mapping (s2agri run): throughput 1 vs 2 workers, Ray vs processes, merge",
        "region": {
            "boxes": boxes,
            "grid": f"{args.cols} x {args.rows} boxes of {args.size_m} m ({size_px} x {size_px} px)",
            "aoi": f"EPSG:32633 rectangle x {REGION_ORIGIN[0]}..{REGION_ORIGIN[0] + args.cols * args.size_m}, "
            f"y {REGION_ORIGIN[1]}..{REGION_ORIGIN[1] + args.rows * args.size_m}, inset {AOI_INSET_M} m",
            "seed": args.seed,
            "parcels": first["parcels"],
        },
        "model": None
        if card is None
        else {
            "name": card["model"],
            "training_boxes": card["training_boxes"],
            "params": card.get("params"),
            "n_parameters": card["n_parameters"],
            "train_seconds": card["train_seconds"],
        },
        "config": base | {"engine": "per variant"},
        "variants": figures,
        "speedup_2_vs_1_workers": speedups,
        "ray_vs_processes_x2_throughput": ray_vs_processes,
        "target": {"speedup_2_vs_1_workers": TARGET_SPEEDUP},
        "meets_target": {key: None if v is None else v >= TARGET_SPEEDUP for key, v in speedups.items()},
        "best_speedup": best,
        "best_x2_over_best_x1": best_vs_best,
        "merge_alone": merge,
        "outputs_reference": reference,
        "outputs_identical_to_reference": identical,
        "all_outputs_identical": all(c["identical"] for v in identical.values() for c in v),
        "runs": runs,
        "idle_wait": idle,
        "calibration_s": calibration,
        "calibration_end_s": calibration_end,
        "note": (
            "Timings from a shared 2-core machine (other engineers' jobs at times, see loadavg_* and "
            "other_cpu_s per variant): upper bounds. boxes_per_minute counts the per-box stages only "
            "(data = simulation + reference rasterisation + save; predict = the full prediction workflow), "
            "Ray start-up excluded and reported apart; merge and mosaic are region-wide stages of the main "
            "process. Each variant's figures are from its best of --runs runs (all throughputs listed). Forked "
            "workers share the parent's pages at the fork, which their ru_maxrss counts."
        ),
    }
    write_results(result, machine, args.output)

    print(f"{boxes} boxes of {size_px} px, model {args.model}; reference workload {calibration:.2f} s")
    print("variant                     boxes/min  data+pred s  ray start  merge s/box  worker peak GB")
    for name, fig in figures.items():
        if fig["status"] != "ok":
            print(f"{name:27s} {fig['status']}")
            continue
        print(
            f"{name:27s} {fig['boxes_per_minute']:9.2f} {fig['per_box_stages_s']:12.1f} "
            f"{fig['ray_start_s']:10.1f} {fig['merge_s_per_box']:12.3f} {fig['worker_peak_rss_gb'] or 0:15.2f}"
        )
    print(f"speed-up 2 vs 1 workers: {speedups} (target >= {TARGET_SPEEDUP})")
    print(f"best processes x2 over best processes x1 (any threads): {best_vs_best}")
    print(f"Ray / processes x2 throughput: {ray_vs_processes}")
    print(
        f"merge_parcels alone: {merge['merge_parcels_best_s']:.2f} s for {merge['boxes']} boxes "
        f"({merge['parts']} parts -> {merge['parcels']} parcels), +{merge['merge_parcels_rss_increase_gb']:.2f} GB"
    )
    print(f"outputs identical: {result['all_outputs_identical']}; results in {args.output}")
    return result


if __name__ == "__main__":
    main()

"""Run folders: box discovery, preflight checks, atomic publication and EOExecutor runs.

Every command that writes a folder (``simulate``, ``train``, ``predict``, ``demo``) builds it in a
hidden sibling (``.<name>.tmp-<random>``) and renames it into place at the end, so a reader never sees
a half-written run. Boxes are checked before any work starts (:func:`preflight`), so a missing
feature is one clear error, not a failure deep inside a worker.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eolearn.core import EOExecutor, EOWorkflow
from eolearn.core.types import Feature

from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.export import atomic_write_text
from s2agri.tasks.safe_io import pickled_arrays
from s2agri.workflows.validate import read_npy_header, scan_eopatch

LOGGER = logging.getLogger(__name__)

#: Sub-folder of a run (and of ``s2agri simulate`` output) holding one EOPatch per box.
EOPATCHES = "eopatches"
#: Sub-folder of a run with eo-learn's execution logs and HTML report.
REPORT = "report"
#: Most boxes listed in one error message.
_LISTED = 5


def _overlaps(out: Path, given: Path) -> bool:
    """Whether replacing ``out`` would touch ``given``: ``out`` is ``given``, holds it, or is an existing
    folder inside it (symbolic links resolved)."""
    out, given = out.resolve(), given.resolve()
    return out == given or out in given.parents or (given in out.parents and out.exists())


def check_out(
    out: str | os.PathLike[str], overwrite: bool, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Validate an output folder argument; an existing non-empty folder needs ``overwrite``.

    ``out`` may neither be nor contain any of ``inputs`` (boxes, model folders), nor be an existing folder
    inside one: replacing it would delete a user's input.
    """
    out = Path(out)
    for given in inputs:
        if _overlaps(out, Path(given)):
            raise S2AgriInputError(
                f"output {out} overlaps the input {given}: writing there would replace the input; "
                "choose an output folder outside the inputs"
            )
    if out.exists() and not out.is_dir():
        raise S2AgriInputError(f"output {out} exists and is not a folder: choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise S2AgriInputError(
            f"output {out} exists and is not empty: choose another path or add --overwrite"
        )
    return out


_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-\d+-[^/]+$")
#: Text files of a run folder that may name the staging folder (EOExecutor logs and report, run files).
_TEXT_PATTERNS = ("report/**/*.html", "report/**/*.log", "*.json")


def published_name(folder: Path) -> str:
    """The name ``folder`` will have once published: ``run`` for a staging folder ``.run.tmp-<pid>-<x>``."""
    match = _STAGING_NAME.match(folder.name)
    return match.group("name") if match else folder.name


class StagingPathFilter(logging.Filter):
    """Log records name the final folder, not the staging folder the run writes into."""

    def __init__(self, staging: Path, out: Path) -> None:
        super().__init__()
        self.staging, self.out = str(staging), str(out)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.staging in message:
            record.msg, record.args = message.replace(self.staging, self.out), None
        return True


def rewrite_staging_paths(staging: Path, out: Path) -> int:
    """Replace the staging folder's path by ``out`` in the run's text files (EOExecutor report and logs,
    JSON files), each rewritten atomically; returns the number of files changed."""
    old, new, changed = str(staging), str(out), 0
    for pattern in _TEXT_PATTERNS:
        for path in staging.glob(pattern):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if old in text:
                tmp = path.with_name(f".{path.name}.rewrite-{os.getpid()}")
                tmp.write_text(text.replace(old, new), encoding="utf-8")
                os.replace(tmp, path)
                changed += 1
    return changed


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out``, on error it is removed.

    ``out`` is replaced only if it is still what it was when staging began: a folder that another run
    published meanwhile (two commands writing the same ``--out``) is never silently replaced; this run
    then fails with an input error and its own output is removed.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out)
    before = _identity(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    handlers = logging.getLogger().handlers
    path_filter = StagingPathFilter(staging, out)
    for handler in handlers:
        handler.addFilter(path_filter)
    try:
        yield staging
        rewrite_staging_paths(staging, out)
        if _identity(out) != before:
            raise _published_meanwhile(out)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(trash)
            staging.rename(out)
            shutil.rmtree(trash)
        else:
            staging.rename(out)  # fails if another run created a non-empty out in between
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if out.exists() and _identity(out) != before:
            raise _published_meanwhile(out) from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for handler in handlers:
            handler.removeFilter(path_filter)


def _published_meanwhile(out: Path) -> S2AgriInputError:
    return S2AgriInputError(
        f"output {out} was written by another run while this one worked: nothing of this run was "
        "published; run it again with another --out (or --overwrite)"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders of ``out`` (``.<name>.tmp-<pid>-*``) whose process is gone (a killed
    run); report those of unknown origin. Returns the removed folders."""
    removed = []
    for folder in sorted(out.parent.glob(f".{out.name}.tmp-*")):
        if not folder.is_dir():
            continue
        pid_text = folder.name[len(f".{out.name}.tmp-") :].split("-", 1)[0]
        if not pid_text.isdigit():
            LOGGER.warning(
                "%s was left by an earlier s2agri run: delete it if no run is writing %s", folder, out
            )
            continue
        if _pid_alive(int(pid_text)):
            continue  # another run is writing: never touch its files
        shutil.rmtree(folder, ignore_errors=True)
        LOGGER.warning("removed %s, left by a run that was killed", folder)
        removed.append(folder)
    return removed


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def is_eopatch(path: Path) -> bool:
    """Whether ``path`` is an EOPatch folder (eo-learn 1.x or legacy layout)."""
    return path.is_dir() and any(path.glob("bbox.*"))


def find_boxes(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """EOPatch folders named by ``paths``: each an EOPatch, a folder of EOPatches, or a run/simulate
    folder with an ``eopatches/`` sub-folder. Order is kept, duplicates and box-name clashes refused."""
    boxes: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise S2AgriInputError(f"{path} does not exist: give EOPatch folders or a folder holding them")
        if is_eopatch(path):
            boxes.append(path)
            continue
        root = path / EOPATCHES if (path / EOPATCHES).is_dir() else path
        found = sorted(p for p in root.iterdir() if is_eopatch(p)) if root.is_dir() else []
        if not found:
            raise S2AgriInputError(
                f"{path} is neither an EOPatch (no bbox file) nor a folder of EOPatches: "
                "give the output of 's2agri simulate' or EOPatch folders"
            )
        boxes.extend(found)
    resolved = [box.resolve() for box in boxes]
    names = [box.name for box in resolved]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise S2AgriInputError(
            f"boxes named {', '.join(clashes[:_LISTED])} appear more than once: box folder names must be unique"
        )
    return resolved


#: What :func:`preflight` tells the user to do by default.
LAYOUT_FIX = "give boxes in the challenge layout ('s2agri validate' lists every problem)"


def preflight(boxes: Sequence[Path], required: Sequence[Feature], fix: str = LAYOUT_FIX) -> None:
    """Raise one :class:`S2AgriInputError` for the first box holding a pickled array, or listing boxes
    that lack a ``required`` feature, then ``fix``."""
    problems = []
    for box in boxes:
        pickled = pickled_arrays(box)
        if pickled:
            raise S2AgriInputError(
                f"{box.name} holds object arrays (pickles, which can run code) or unreadable arrays in "
                f"{', '.join(pickled[:_LISTED])}: s2agri refuses them; write those features as numeric arrays"
            )
        present = scan_eopatch(box).features
        missing = [f"{ftype.value}/{name}" for ftype, name in required if (ftype, name) not in present]
        if missing:
            problems.append(f"{box.name} lacks {', '.join(missing)}")
        for ftype, name in required:
            paths = present.get((ftype, name))
            if not paths or not ftype.is_array() or paths[0].is_dir():
                continue
            try:
                ndim = len(read_npy_header(paths[0]).shape)
            except Exception as exc:  # unreadable header: say so instead of a traceback later
                problems.append(
                    f"{box.name}: {ftype.value}/{name} cannot be read ({' '.join(str(exc).split())})"
                )
                continue
            if ndim != ftype.ndim():
                problems.append(
                    f"{box.name}: {ftype.value}/{name} has {ndim} dimensions, expected {ftype.ndim()}"
                )
    if problems:
        more = f" (and {len(problems) - _LISTED} more boxes)" if len(problems) > _LISTED else ""
        raise S2AgriInputError(f"{'; '.join(problems[:_LISTED])}{more}: {fix}")


def relative_folders(boxes: Sequence[Path]) -> tuple[Path, list[str]]:
    """The common parent of ``boxes`` and each box's path relative to it (for LoadTask)."""
    root = Path(os.path.commonpath([box.parent for box in boxes]))
    return root, [str(box.relative_to(root)) for box in boxes]


@dataclass
class ExecutionSummary:
    """What an EOExecutor run did: seconds per box, failures with their one-line reason, the report."""

    names: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    report: Path | None = None

    @property
    def succeeded(self) -> list[str]:
        return [name for name in self.names if name not in self.failures]

    def failure_line(self) -> str:
        """One line naming the failed boxes and the first reasons."""
        listed = "; ".join(f"{name}: {reason}" for name, reason in list(self.failures.items())[:_LISTED])
        return f"{len(self.failures)} of {len(self.names)} boxes failed ({listed})"

    def to_json(self) -> dict[str, Any]:
        return {
            "boxes": self.names,
            "seconds": self.seconds,
            "failures": self.failures,
            "report": None if self.report is None else str(self.report),
        }


#: Thread-pool variables set for worker processes (unless the user set them).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


#: Warnings every worker would repeat that users cannot act on (``-W`` syntax, message prefixes):
#: ``fs`` (imported by eo-learn) on pkg_resources, sentinelhub on ``str(BBox)`` in eo-learn's logs.
WORKER_WARNING_FILTERS: tuple[str, ...] = (
    "ignore:pkg_resources is deprecated:UserWarning",
    "ignore:The string representation of `BBox` will change",
)


def quiet_worker_warnings() -> None:
    """Pass :data:`WORKER_WARNING_FILTERS` to worker processes (through ``PYTHONWARNINGS``, read when a
    fresh interpreter starts), keeping the filters the user set there."""
    given = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
    os.environ["PYTHONWARNINGS"] = ",".join([*given, *(f for f in WORKER_WARNING_FILTERS if f not in given)])


def use_clean_workers(workers: int) -> None:
    """Start worker processes with ``forkserver`` and ``cores // workers`` threads each.

    eo-learn's EOExecutor forks its workers by default; once the main process has started OpenMP
    threads (loading a LightGBM model, numba, torch), a forked worker's own OpenMP region can wait
    forever for pool threads that do not exist in the child (a deadlock seen with 2 workers). Clean
    ``forkserver`` workers import s2agri themselves; the thread variables keep 2 workers from
    oversubscribing the cores.
    """
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, threads)
    quiet_worker_warnings()
    if multiprocessing.get_start_method(allow_none=True) != "forkserver":
        multiprocessing.set_start_method("forkserver", force=True)


def ensure_ray(address: str | None, workers: int) -> None:
    """Connect to Ray at ``address`` ('auto', 'ray://...'), or start a local one with ``workers`` CPUs."""
    try:
        import ray
    except ImportError as exc:
        raise S2AgriInputError("the ray engine needs Ray: pip install 's2agri[ray]'") from exc
    if ray.is_initialized():
        return
    if address is None:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise S2AgriInputError(
                f"cannot connect to Ray at {address} ({exc}): start it or check the address"
            ) from exc


def _reason(exception: BaseException) -> str:
    return " ".join(f"{type(exception).__name__}: {exception}".split())


def execute(
    workflow: EOWorkflow,
    execution_kwargs: Sequence[dict],
    names: Sequence[str],
    logs_folder: Path,
    workers: int = 1,
    *,
    report: bool = True,
    engine: str = "processes",
    ray_address: str | None = None,
) -> ExecutionSummary:
    """Run ``workflow`` once per box with eo-learn's EOExecutor (progress bar, logs, HTML report).

    ``engine="ray"`` uses eo-learn's ``RayExecutor`` instead, connecting to ``ray_address`` (or
    starting a local Ray with ``workers`` CPUs when none is running). A failing box does not stop the
    others; its reason is in :attr:`ExecutionSummary.failures`.
    """
    common: dict[str, Any] = {
        "execution_names": list(names),
        "save_logs": True,
        "logs_folder": str(logs_folder),
    }
    start = time.perf_counter()
    if engine == "ray":
        from eolearn.core.extra.ray import RayExecutor

        ensure_ray(ray_address, workers)
        executor: EOExecutor = RayExecutor(workflow, list(execution_kwargs), **common)
        results = executor.run(desc="boxes", leave=False)
    elif engine == "processes":
        executor = EOExecutor(workflow, list(execution_kwargs), **common)
        if workers > 1:
            use_clean_workers(workers)
        results = executor.run(workers=workers, multiprocess=workers > 1, desc="boxes", leave=False)
    else:
        raise S2AgriInputError(f"engine {engine!r} is unknown: use 'processes' or 'ray'")
    LOGGER.info("%d boxes in %.1f s with %d worker(s)", len(names), time.perf_counter() - start, workers)
    summary = ExecutionSummary(list(names))
    for name, result in zip(names, results, strict=True):
        summary.seconds[name] = round((result.end_time - result.start_time).total_seconds(), 3)
        if result.workflow_failed():
            stats = result.stats.get(result.error_node_uid or "")
            info = stats.exception_info if stats is not None else None
            summary.failures[name] = _reason(info.exception) if info is not None else "unknown error"
    if report:
        try:
            with warnings.catch_warnings():  # without the Graphviz 'dot' program the graph is left out
                warnings.filterwarnings("ignore", message=".*Graphviz.*", category=UserWarning)
                executor.make_report(include_logs=True)
            summary.report = Path(executor.get_report_path(full_path=True))
        except Exception as exc:  # the report is a convenience; its absence must not fail a run
            LOGGER.warning("no HTML execution report: %s", _reason(exc))
    return summary


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")

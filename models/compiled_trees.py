"""LightGBM trees compiled to native code (treelite + tl2cgen): the same probabilities, faster.

A LightGBM model is a few hundred small trees; ``Booster.predict`` walks them as data. ``tl2cgen``
turns the model into C (one function of nested ``if`` per tree, thresholds as constants), compiles
it with the machine's C compiler into a shared library and predicts through it. On the default
model (150 trees of 63 leaves, 157 seasonal features) and the 250,000 10 m rows of a full box,
this predicts in 0.6-0.8 s against 2.0 s for ``Booster.predict`` (2 threads), with identical
probabilities (largest difference 0.0); compiling takes about 3 s, once per model
(``benchmarks/results/pipeline.json``).

Safety: the library is built here, from the model's text, never read from a model folder. It is kept
in a private cache (``$S2AGRI_CACHE_DIR`` or ``~/.cache/s2agri``, ``compiled-trees/``, mode 0700),
named by the SHA-256 of the model text and the compiler versions, and loaded only when that folder
and the file belong to the current user and nobody else may write them.

Optional: it needs the ``fast`` extra (``pip install 's2agri[fast]'``) and a C compiler (``gcc`` or
``cc``); without them predictions use ``Booster.predict``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import stat
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

LOGGER = logging.getLogger(__name__)

#: Environment variable naming the cache root (default ``~/.cache/s2agri``).
CACHE_ENV = "S2AGRI_CACHE_DIR"
#: Sub-folder of the cache root holding the compiled libraries.
CACHE_SUBDIR = "compiled-trees"
#: C compilers tried, in this order.
COMPILERS = ("gcc", "cc", "clang")


def unavailable_reason() -> str | None:
    """Why trees cannot be compiled here (missing package or compiler), or None when they can."""
    for package in ("treelite", "tl2cgen"):
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            return f"the {package} package is not installed (pip install 's2agri[fast]')"
    if _compiler() is None:
        return f"no C compiler found (looked for {', '.join(COMPILERS)})"
    return None


def _compiler() -> str | None:
    return next((name for name in COMPILERS if shutil.which(name)), None)


def cache_root() -> Path:
    """The private cache folder of compiled libraries (created, mode 0700)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "s2agri") / CACHE_SUBDIR
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _require_private(root)
    return root


def _require_private(path: Path) -> None:
    """Refuse a cache entry another user owns or may write (it would be loaded as code)."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            f"{path} is not private to this user (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}): "
            f"remove it or point {CACHE_ENV} to a private folder"
        )


def library_key(model_text: str) -> str:
    """SHA-256 of the model text and the versions of the compiler packages."""
    digest = hashlib.sha256(model_text.encode())
    for package in ("treelite", "tl2cgen"):
        digest.update(f"\n{package}=={metadata.version(package)}".encode())
    return digest.hexdigest()


def compile_model_text(model_text: str, *, threads: int = 2) -> Path:
    """The cached shared library of a LightGBM text model, compiled now if it is not cached yet."""
    import tl2cgen
    import treelite

    root = cache_root()
    library = root / f"{library_key(model_text)}.so"
    if library.is_file():
        _require_private(library)
        return library
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(unavailable_reason())
    chatter = io.StringIO()  # tl2cgen prints its native log lines to stdout: keep them out of the CLI's
    with (
        tempfile.TemporaryDirectory(dir=root, prefix=".build-") as build,
        contextlib.redirect_stdout(chatter),
    ):
        model_file = Path(build) / "model.txt"
        model_file.write_text(model_text)
        partial = Path(build) / library.name
        try:
            model = treelite.frontend.load_lightgbm_model(str(model_file))
            tl2cgen.export_lib(
                model,
                toolchain=compiler,
                libpath=str(partial),
                params={"parallel_comp": max(1, threads) * 4},
                nthread=max(1, threads),
            )
        except Exception as exc:  # TL2cgenError, TreeliteError, a compiler that fails: all optional
            raise RuntimeError(
                f"{compiler} could not compile the trees: {' '.join(str(exc).split())[:300]}"
            ) from exc
        partial.chmod(0o600)
        os.replace(partial, library)
    for line in chatter.getvalue().splitlines():
        LOGGER.debug("tl2cgen: %s", line)
    LOGGER.info("compiled the trees into %s", library)
    return library


def openmp_thread_limit() -> int:
    """The threads OpenMP may use here: ``OMP_NUM_THREADS`` (its first level; region workers set it to
    their share of the cores), else the usable cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CompiledTrees:
    """Predicts with a compiled library; picklable (the library is opened again in each process)."""

    def __init__(self, library: Path, threads: int = 2) -> None:
        self.library = Path(library)
        self.threads = max(1, int(threads))
        self._predictor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"library": self.library, "threads": self.threads, "_predictor": None}

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N,) float64 probabilities of (N, F) float32 rows, as ``Booster.predict``."""
        if self._predictor is None:
            import tl2cgen

            _require_private(self.library)
            threads = min(self.threads, openmp_thread_limit())  # tl2cgen refuses more than OpenMP allows
            self._predictor = tl2cgen.Predictor(str(self.library), nthread=threads, verbose=False)
        import tl2cgen

        rows = np.ascontiguousarray(X, dtype=np.float32)
        return np.asarray(self._predictor.predict(tl2cgen.DMatrix(rows)), dtype=np.float64).reshape(-1)

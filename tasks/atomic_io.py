"""Atomic file writing, at the bottom of the layers: a reader never sees a half-written file.

:func:`atomic_path` yields a temporary name in the target folder and renames it over the target
(``os.replace``, atomic) only when the block succeeds; on failure it removes the temporary file and
the side files GDAL/SQLite may leave.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

#: Side files SQLite/GDAL may leave next to a temporary file when writing fails.
_SIDECARS = ("-journal", "-wal", "-shm", ".aux.xml")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); on success rename it to ``path``.

    The rename is ``os.replace`` in the same folder, hence atomic; on error the temporary file
    (and GDAL/SQLite side files) are removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"folder {path.parent} does not exist: create it first")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        for candidate in (tmp, *(Path(f"{tmp}{side}") for side in _SIDECARS)):
            candidate.unlink(missing_ok=True)
        raise
    for side in _SIDECARS:
        Path(f"{tmp}{side}").unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`: all of it or nothing, no leftover."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)

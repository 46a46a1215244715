"""Reading EOPatches without running code from them.

eo-learn 1.5 reads every ``.npy`` feature with ``np.load(..., allow_pickle=True)``: an object array in
a crafted EOPatch (e.g. ``data/CLP.npy.gz``) is unpickled and can run arbitrary code. s2agri closes
that in two places:

* :func:`refuse_pickled_reads` (applied when :mod:`s2agri.tasks` is imported, so in every worker
  process too) makes eo-learn's numpy reader use ``allow_pickle=False``: loading an object array raises
  a ``ValueError`` instead of running its pickle;
* :func:`pickled_arrays` reads only the ``.npy`` headers of an EOPatch folder (no array, no pickle)
  and names the object arrays, so commands refuse such a box in one line before any work.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from eolearn.core import eodata_io


def _read_numpy_without_pickles(self: object, file: BinaryIO | gzip.GzipFile) -> np.ndarray:
    return np.load(file, allow_pickle=False)


def refuse_pickled_reads() -> None:
    """Make eo-learn's numpy feature reader refuse pickled (object) arrays. Idempotent."""
    eodata_io.FeatureIONumpy._read_from_file = _read_numpy_without_pickles  # type: ignore[method-assign]


def npy_dtype(path: str | os.PathLike[str]) -> np.dtype:
    """The dtype in the header of a ``.npy`` or ``.npy.gz`` file, read without loading the array."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return dtype


def _npy_files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file() and (path.name.endswith(".npy") or path.name.endswith(".npy.gz")):
            yield path


def pickled_arrays(folder: str | os.PathLike[str]) -> list[str]:
    """Paths (relative to ``folder``) of the ``.npy`` files of an EOPatch folder that hold object arrays
    (pickles) or cannot be read as ``.npy`` at all."""
    folder = Path(folder)
    bad = []
    for path in sorted(_npy_files(folder)):
        try:
            unsafe = npy_dtype(path).hasobject
        except (OSError, ValueError, EOFError):
            unsafe = True
        if unsafe:
            bad.append(str(path.relative_to(folder)))
    return bad

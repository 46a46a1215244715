"""Check EOPatch folders against the data contract (``s2agri.tasks.contract``).

Only file headers are read (the ``.npy`` header, through gzip for ``.npy.gz``), never whole
arrays, so checking the 10 GB of challenge data takes seconds. Both on-disk layouts are
understood: eo-learn 1.x (``bbox.geojson``, ``timestamps.json``, ``<ftype>/<NAME>.npy[.gz]``,
vector features as ``.gpkg``) and the legacy eo-learn 0.x layout of the challenge folders
(``bbox.pkl[.gz]``, ``timestamp.pkl[.gz]``, ``meta_info.pkl[.gz]``, ``.npy.gz`` arrays).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import pickle
import struct
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
from dateutil.parser import isoparse
from eolearn.core import FeatureType
from sentinelhub import CRS, BBox, Geometry

from s2agri.tasks import contract
from s2agri.tasks.contract import FeatureSpec

logger = logging.getLogger(__name__)

PATCH = "eopatch"  #: feature column of violations about the folder itself
BBOX = "bbox"
TIMESTAMPS = "timestamps"

_ARRAY_EXTENSIONS = (".npy", ".npy.gz", ".zarr")
_VECTOR_EXTENSIONS = (".gpkg", ".gpkg.gz", ".pkl", ".pkl.gz")
_DIMENSIONS = {"temporal": "(T, H, W, C)", "scalar": "(T, C)"}
_TIMELESS_DIMENSIONS = "(H, W, C)"


@dataclass(frozen=True)
class Violation:
    """One way an EOPatch breaks the contract: the feature (or ``bbox``, ``timestamps``,
    ``eopatch``) and a one-line message."""

    feature: str
    message: str

    def __str__(self) -> str:
        return f"{self.feature}: {self.message}"


@dataclass(frozen=True)
class ArrayHeader:
    """Shape and dtype of a stored array, with the byte offset of its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int = 0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class EOPatchFiles:
    """The files of one EOPatch folder, grouped by what they store."""

    bbox: list[Path] = field(default_factory=list)
    timestamps: list[Path] = field(default_factory=list)
    features: dict[tuple[FeatureType, str], list[Path]] = field(default_factory=lambda: defaultdict(list))

    @property
    def is_empty(self) -> bool:
        return not (self.bbox or self.timestamps or self.features)


@dataclass(frozen=True)
class _BBoxInfo:
    epsg: int
    width_m: float
    height_m: float


def split_extensions(name: str) -> tuple[str, str]:
    """``"BANDS.npy.gz"`` -> ``("BANDS", ".npy.gz")``, the way eo-learn names features."""
    extensions = "".join(Path(name).suffixes)
    return (name[: -len(extensions)] if extensions else name), extensions


@contextmanager
def _open_maybe_gzip(path: Path) -> Iterator[IO[bytes]]:
    """Open a file for binary reading, through gzip when its name ends with ``.gz``."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as compressed:
            yield cast(IO[bytes], compressed)
    else:
        with path.open("rb") as stream:
            yield stream


def read_npy_header(path: Path) -> ArrayHeader:
    """Shape and dtype of a ``.npy`` or ``.npy.gz`` file, from its header alone."""
    with _open_maybe_gzip(path) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs only by a UTF-8 header
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        return ArrayHeader(tuple(int(n) for n in shape), np.dtype(dtype), stream.tell())


def _stored_size_problem(path: Path, header: ArrayHeader) -> str | None:
    """A message when the file is shorter or longer than its header promises (truncated copy)."""
    expected = header.data_offset + header.nbytes
    if path.name.endswith(".npy"):
        actual = path.stat().st_size
        if actual != expected:
            return f"file has {actual} bytes, its header promises {expected}: truncated or corrupt"
    elif path.name.endswith(".npy.gz"):
        with path.open("rb") as stream:  # the gzip trailer stores the uncompressed size mod 2**32
            stream.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", stream.read(4))
        if isize != expected % 2**32:
            return (
                f"gzip stream holds {isize} bytes, the .npy header promises {expected}: truncated or corrupt"
            )
    return None


def scan_eopatch(root: Path) -> EOPatchFiles:
    """Group the files of an EOPatch folder (either layout) without reading them."""
    files = EOPatchFiles()
    for entry in sorted(root.iterdir()):
        name, _ = split_extensions(entry.name)
        if entry.is_dir():
            if not FeatureType.has_value(entry.name) or entry.name == FeatureType.META_INFO.value:
                continue
            ftype = FeatureType(entry.name)
            for item in sorted(entry.iterdir()):
                fname, extension = split_extensions(item.name)
                known = _VECTOR_EXTENSIONS if ftype.is_vector() else _ARRAY_EXTENSIONS
                if fname and extension in known:
                    files.features[(ftype, fname)].append(item)
                else:
                    logger.debug("%s: ignoring %s", root, item)
        elif name == BBOX:
            files.bbox.append(entry)
        elif name in (TIMESTAMPS, "timestamp"):  # "timestamp" in eo-learn 0.x
            files.timestamps.append(entry)
    return files


_SAFE_GLOBALS = frozenset(
    {("_codecs", "encode"), ("copyreg", "_reconstructor"), ("pytz", "_p"), ("pytz", "_UTC")}
)
_SAFE_TYPE_MODULES = ("datetime", "dateutil", "pytz", "sentinelhub")
_SAFE_BUILTINS = frozenset(
    {"object", "list", "tuple", "dict", "set", "frozenset", "int", "float", "str", "bytes"}
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles bboxes and timestamps only: classes of sentinelhub and datetime, no callables."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or (module == "builtins" and name in _SAFE_BUILTINS):
            return super().find_class(module, name)
        if module.split(".")[0] in _SAFE_TYPE_MODULES:
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> Any:
    with _open_maybe_gzip(path) as stream:
        return _RestrictedUnpickler(stream).load()


def _bbox_from_pickle(obj: Any) -> _BBoxInfo:
    if not isinstance(obj, BBox):
        raise ValueError(f"holds a {type(obj).__name__}, not a sentinelhub BBox")
    state = vars(obj)  # read the state directly: old sentinelhub versions named attributes differently
    crs = state.get("_crs", state.get("crs"))
    if crs is None:
        raise ValueError("the pickled BBox has no CRS")
    min_x, min_y, max_x, max_y = (float(state[key]) for key in ("min_x", "min_y", "max_x", "max_y"))
    return _BBoxInfo(CRS(crs).epsg, max_x - min_x, max_y - min_y)


def _read_bbox(path: Path) -> _BBoxInfo:
    _, extension = split_extensions(path.name)
    if extension.startswith(".pkl"):
        try:
            obj = _load_pickle(path)
        except Exception as exc:  # an unpicklable file has many failure modes; all are one violation
            raise ValueError(
                f"cannot unpickle a sentinelhub BBox ({type(exc).__name__}: {exc}); re-save the EOPatch with eo-learn 1.x"
            ) from exc
        return _bbox_from_pickle(obj)
    if extension.startswith((".geojson", ".json")):
        with _open_maybe_gzip(path) as stream:
            bbox = Geometry.from_geojson(json.load(stream)).bbox
        return _BBoxInfo(bbox.crs.epsg, bbox.max_x - bbox.min_x, bbox.max_y - bbox.min_y)
    raise ValueError(f"unknown bbox format '{extension}': expected .geojson or .pkl, optionally gzipped")


def _read_timestamps(path: Path) -> list[datetime]:
    _, extension = split_extensions(path.name)
    if extension.startswith(".pkl"):
        values = _load_pickle(path)
        if not isinstance(values, list) or not all(isinstance(v, date) for v in values):
            raise ValueError("the pickle does not hold a list of datetimes")
        return [v if isinstance(v, datetime) else datetime(v.year, v.month, v.day) for v in values]
    if extension.startswith(".json"):
        with _open_maybe_gzip(path) as stream:
            values = json.load(stream)
        if not isinstance(values, list):
            raise ValueError("the JSON does not hold a list of timestamps")
        return [isoparse(v) for v in values]
    raise ValueError(f"unknown timestamps format '{extension}': expected .json or .pkl, optionally gzipped")


def _single(paths: list[Path], feature: str, violations: list[Violation]) -> Path | None:
    if len(paths) > 1:
        names = ", ".join(p.name for p in paths)
        violations.append(
            Violation(feature, f"stored more than once ({names}); keep one file, using {paths[0].name}")
        )
    return paths[0] if paths else None


def _check_bbox(files: EOPatchFiles, violations: list[Violation]) -> _BBoxInfo | None:
    path = _single(files.bbox, BBOX, violations)
    if path is None:
        violations.append(
            Violation(BBOX, "missing: an EOPatch needs its bbox (bbox.geojson or legacy bbox.pkl)")
        )
        return None
    try:
        info = _read_bbox(path)
    except Exception as exc:  # unreadable for any reason: report it, keep checking the rest
        violations.append(Violation(BBOX, f"cannot read {path.name}: {exc}"))
        return None
    if not contract.is_utm_epsg(info.epsg):
        violations.append(
            Violation(
                BBOX,
                f"CRS EPSG:{info.epsg} is not a UTM zone (EPSG:326xx/327xx); "
                f"the challenge boxes are in EPSG:{contract.CHALLENGE_CRS_EPSG}",
            )
        )
        return None
    return info


def _check_timestamps(files: EOPatchFiles, violations: list[Violation]) -> int | None:
    path = _single(files.timestamps, TIMESTAMPS, violations)
    if path is None:
        violations.append(
            Violation(TIMESTAMPS, "missing: temporal features need timestamps.json (legacy timestamp.pkl)")
        )
        return None
    try:
        stamps = _read_timestamps(path)
    except Exception as exc:  # unreadable for any reason: report it, keep checking the rest
        violations.append(Violation(TIMESTAMPS, f"cannot read {path.name}: {exc}"))
        return None
    try:
        backwards = next((i for i in range(1, len(stamps)) if stamps[i] < stamps[i - 1]), None)
    except TypeError:
        violations.append(Violation(TIMESTAMPS, "mixes timezone-aware and naive timestamps"))
    else:
        if backwards is not None:
            violations.append(
                Violation(
                    TIMESTAMPS, f"not in increasing order (index {backwards} precedes index {backwards - 1})"
                )
            )
        repeated = sorted({str(stamp) for i, stamp in enumerate(stamps) if stamp in stamps[:i]})
        if repeated:
            violations.append(
                Violation(
                    TIMESTAMPS,
                    f"{len(repeated)} acquisition time(s) repeated ({', '.join(repeated[:3])}): merge the frames of "
                    "one acquisition into one",
                )
            )
    return len(stamps)


def _check_feature(spec: FeatureSpec, path: Path, violations: list[Violation]) -> ArrayHeader | None:
    """Check dtype, dimensions and channels; the header when its shape can be compared further."""
    if path.name.endswith(".zarr"):
        violations.append(
            Violation(spec.path, f"stored as {path.name}: s2agri reads arrays from .npy or .npy.gz files")
        )
        return None
    try:
        header = read_npy_header(path)
        size_problem = _stored_size_problem(path, header)
    except (OSError, ValueError, EOFError, struct.error) as exc:
        violations.append(Violation(spec.path, f"cannot read the array header of {path.name}: {exc}"))
        return None
    if size_problem:
        violations.append(Violation(spec.path, size_problem))
    if header.dtype.newbyteorder("=") != spec.dtype:
        violations.append(Violation(spec.path, f"dtype {header.dtype}, expected {spec.dtype}"))
    dims = _DIMENSIONS.get(spec.kind, _TIMELESS_DIMENSIONS)
    ndim = dims.count(",") + 1
    if len(header.shape) != ndim:
        violations.append(
            Violation(
                spec.path, f"shape {header.shape} has {len(header.shape)} dimensions, expected {ndim} {dims}"
            )
        )
        return None
    if header.shape[-1] != spec.channels:
        violations.append(
            Violation(
                spec.path, f"shape {header.shape} has {header.shape[-1]} channels, expected {spec.channels}"
            )
        )
    return header


def _reference_value(values: dict[str, Any]) -> tuple[str, Any]:
    """The value the others are compared with: data/BANDS when present, else the most common."""
    bands = contract.INPUT_FEATURES[0].path
    if bands in values:
        return bands, values[bands]
    common = Counter(values.values()).most_common(1)[0][0]
    return next(path for path, value in values.items() if value == common), common


def _size(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]} px"


def _check_consistency(
    headers: dict[str, tuple[FeatureSpec, ArrayHeader]],
    n_timestamps: int | None,
    bbox: _BBoxInfo | None,
    violations: list[Violation],
) -> None:
    """T across temporal features and timestamps; H, W across inputs, references and the bbox."""
    frames = {p: h.shape[0] for p, (s, h) in headers.items() if s.kind in ("temporal", "scalar")}
    if frames:
        ref_path, ref_t = _reference_value(frames)
        for path, t in frames.items():
            if t != ref_t:
                violations.append(Violation(path, f"T={t}, but {ref_path} has T={ref_t}"))
        if n_timestamps is not None and n_timestamps != ref_t:
            violations.append(
                Violation(TIMESTAMPS, f"{n_timestamps} timestamps, but {ref_path} has T={ref_t}")
            )

    sizes = {
        p: (h.shape[-3], h.shape[-2])
        for p, (s, h) in headers.items()
        if s.kind in ("temporal", "timeless_input")
    }
    input_hw: tuple[int, int] | None = None
    if sizes:
        ref_path, input_hw = _reference_value(sizes)
        if min(input_hw) == 0:
            violations.append(
                Violation(ref_path, f"size {_size(input_hw)} (H x W): a box needs at least 1 x 1 px")
            )
        for path, hw in sizes.items():
            if hw != input_hw:
                violations.append(
                    Violation(path, f"size {_size(hw)} (H x W), but {ref_path} is {_size(input_hw)}")
                )
        if bbox is not None:
            res = contract.INPUT_RESOLUTION_M
            bbox_hw = (round(bbox.height_m / res), round(bbox.width_m / res))
            if bbox_hw != input_hw:
                violations.append(
                    Violation(
                        BBOX,
                        f"extent {bbox.height_m:g} x {bbox.width_m:g} m (H x W) is {_size(bbox_hw)} at {res:g} m, "
                        f"but {ref_path} is {_size(input_hw)}",
                    )
                )

    if input_hw is not None:
        expected = (contract.SCALE * input_hw[0], contract.SCALE * input_hw[1])
        why = f"{contract.SCALE}x the input size {_size(input_hw)}"
    elif bbox is not None:
        res = contract.TARGET_RESOLUTION_M
        expected = (round(bbox.height_m / res), round(bbox.width_m / res))
        why = f"the bbox extent at {res:g} m"
    else:
        return
    for path, (spec, header) in headers.items():
        if spec.kind != "timeless_reference":
            continue
        hw = (header.shape[-3], header.shape[-2])
        if hw != expected:
            violations.append(Violation(path, f"size {_size(hw)} (H x W), expected {_size(expected)}: {why}"))


def validate_eopatch(path: str | os.PathLike[str]) -> list[Violation]:
    """Every way the EOPatch folder at ``path`` breaks the contract; empty when it is valid."""
    root = Path(path)
    if not root.is_dir():
        return [Violation(PATCH, "not a folder" if root.exists() else "no such folder")]
    try:
        files = scan_eopatch(root)
    except OSError as exc:
        return [Violation(PATCH, f"cannot list the folder: {exc}")]
    if files.is_empty:
        return [Violation(PATCH, "not an EOPatch folder: no bbox, timestamps or feature files")]

    violations: list[Violation] = []
    bbox = _check_bbox(files, violations)
    n_timestamps = _check_timestamps(files, violations)

    headers: dict[str, tuple[FeatureSpec, ArrayHeader]] = {}
    for spec in contract.CONTRACT:
        feature_path = _single(files.features.get(spec.feature, []), spec.path, violations)
        if feature_path is None:
            if spec.required:
                violations.append(Violation(spec.path, "missing: a required input feature"))
            continue
        header = _check_feature(spec, feature_path, violations)
        if header is not None:
            headers[spec.path] = (spec, header)

    present = [s.path for s in contract.REFERENCE_FEATURES if s.feature in files.features]
    if 0 < len(present) < len(contract.REFERENCE_FEATURES):
        for spec in contract.REFERENCE_FEATURES:
            if spec.path not in present:
                violations.append(
                    Violation(
                        spec.path,
                        f"missing, while {', '.join(present)} {'is' if len(present) == 1 else 'are'} present: "
                        "a box with reference masks needs all three",
                    )
                )

    _check_consistency(headers, n_timestamps, bbox, violations)
    return violations

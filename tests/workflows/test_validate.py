"""The EOPatch validator: valid patches pass, each kind of breakage gives its exact violation."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from eolearn.core import EOPatch
from eopatch_factory import SMALL_FRAMES, SMALL_SIZE, build_eopatch, contract_array
from sentinelhub import CRS, BBox
from sentinelhub.io_utils import write_data
from shapely.geometry import box

from s2agri.tasks import contract
from s2agri.workflows.validate import Violation, read_npy_header, scan_eopatch, validate_eopatch

T, N = SMALL_FRAMES, SMALL_SIZE
NOT_UTM_4326 = "CRS EPSG:4326 is not a UTM zone (EPSG:326xx/327xx); the challenge boxes are in EPSG:32633"


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy``, gzipped when the name ends with ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") if path.name.endswith(".gz") else path.open("wb") as stream:
        np.save(stream, array)


def write_pickle_gz(path: Path, obj: object) -> None:
    with gzip.open(path, "wb") as stream:
        pickle.dump(obj, stream)


def replace_feature(patch: Path, feature: str, array: np.ndarray) -> None:
    """Overwrite a stored feature behind eo-learn's back."""
    write_npy(patch / f"{feature}.npy.gz", array)


def spec(feature: str) -> contract.FeatureSpec:
    return next(s for s in contract.CONTRACT if s.path == feature)


def write_legacy_eopatch(path: Path, frames: int = T, size: int = N) -> Path:
    """The eo-learn 0.x layout of the challenge folders: pickled bbox and timestamps, ``.npy.gz`` arrays."""
    path.mkdir(parents=True)
    extent = size * contract.INPUT_RESOLUTION_M
    write_pickle_gz(
        path / "bbox.pkl.gz", BBox((500000.0, 5100000.0, 500000 + extent, 5100000 + extent), CRS(32633))
    )
    write_pickle_gz(path / "timestamp.pkl.gz", [dt.datetime(2019, 3, 1 + i) for i in range(frames)])
    write_pickle_gz(path / "meta_info.pkl.gz", {"maxcc": 0.5, "time_interval": contract.TIME_INTERVAL})
    for feature_spec in contract.CONTRACT:
        write_npy(path / f"{feature_spec.path}.npy.gz", contract_array(feature_spec, frames, size))
    return path


# --- valid patches -------------------------------------------------------------------------------


def test_valid_eopatch_with_reference(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    assert (patch / "data" / "BANDS.npy.gz").is_file()  # eo-learn 1.5 writes gzipped arrays
    assert validate_eopatch(patch) == []


def test_valid_eopatch_without_reference(write_eopatch: Callable[..., Path]) -> None:
    assert validate_eopatch(write_eopatch(reference=False)) == []


def test_valid_eopatch_with_uncompressed_npy_and_vector(tmp_path: Path) -> None:
    patch = build_eopatch()
    bbox = patch.bbox
    parcel = box(bbox.min_x, bbox.min_y, bbox.min_x + 50, bbox.min_y + 50)
    patch.vector_timeless["REFERENCE"] = gpd.GeoDataFrame(
        {"label": [2]}, geometry=[parcel], crs=bbox.crs.pyproj_crs()
    )
    path = tmp_path / "eop"
    patch.save(str(path))
    (path / "data" / "CLP.npy.gz").unlink()
    write_npy(path / "data" / "CLP.npy", contract_array(spec("data/CLP"), T, N))
    assert scan_eopatch(path).features[contract.REFERENCE] == [path / "vector_timeless" / "REFERENCE.gpkg.gz"]
    assert validate_eopatch(path) == []


def test_legacy_layout_validates(tmp_path: Path) -> None:
    assert validate_eopatch(write_legacy_eopatch(tmp_path / "eopatch-153")) == []


def test_read_npy_header_reads_gzip_header_only(tmp_path: Path) -> None:
    path = tmp_path / "a.npy.gz"
    write_npy(path, np.zeros((2, 5, 7, 12), np.uint16))
    header = read_npy_header(path)
    assert (header.shape, header.dtype) == ((2, 5, 7, 12), np.dtype(np.uint16))
    assert header.nbytes == 2 * 5 * 7 * 12 * 2


# --- broken patches, one breakage each ------------------------------------------------------------


def test_missing_bands(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    (patch / "data" / "BANDS.npy.gz").unlink()
    assert validate_eopatch(patch) == [Violation("data/BANDS", "missing: a required input feature")]


def test_bands_float32(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    replace_feature(patch, "data/BANDS", np.zeros((T, N, N, 12), np.float32))
    assert validate_eopatch(patch) == [Violation("data/BANDS", "dtype float32, expected uint16")]


def test_clm_two_channels(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    replace_feature(patch, "mask/CLM", np.zeros((T, N, N, 2), np.uint8))
    assert validate_eopatch(patch) == [
        Violation("mask/CLM", "shape (3, 20, 20, 2) has 2 channels, expected 1")
    ]


def test_wrong_number_of_dimensions(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    replace_feature(patch, "mask/SCL", np.zeros((T, N, N), np.uint8))
    assert validate_eopatch(patch) == [
        Violation("mask/SCL", "shape (3, 20, 20) has 3 dimensions, expected 4 (T, H, W, C)")
    ]


def test_norm_factors_shape(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    replace_feature(patch, "scalar/NORM_FACTORS", np.zeros((T, 2), np.float32))
    assert validate_eopatch(patch) == [
        Violation("scalar/NORM_FACTORS", "shape (3, 2) has 2 channels, expected 1")
    ]


def test_t_mismatch_between_bands_and_clp(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    replace_feature(patch, "data/CLP", np.zeros((T + 1, N, N, 1), np.uint8))
    assert validate_eopatch(patch) == [Violation("data/CLP", "T=4, but data/BANDS has T=3")]


def test_timestamps_count_mismatch(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    stamps = json.loads((patch / "timestamps.json").read_text())
    (patch / "timestamps.json").write_text(json.dumps([*stamps, "2019-08-30T10:00:00"]))
    assert validate_eopatch(patch) == [Violation("timestamps", "4 timestamps, but data/BANDS has T=3")]


def test_timestamps_out_of_order(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    stamps = json.loads((patch / "timestamps.json").read_text())
    (patch / "timestamps.json").write_text(json.dumps(stamps[::-1]))
    assert validate_eopatch(patch) == [
        Violation("timestamps", "not in increasing order (index 1 precedes index 0)")
    ]


def test_bbox_not_utm(tmp_path: Path) -> None:
    patch = build_eopatch()
    patch.bbox = BBox((14.5, 46.0, 14.5026, 46.0018), CRS.WGS84)
    patch.save(str(tmp_path / "eop"))
    assert validate_eopatch(tmp_path / "eop") == [Violation("bbox", NOT_UTM_4326)]


def test_bbox_extent_does_not_match_input_size(tmp_path: Path) -> None:
    patch = build_eopatch()
    patch.bbox = BBox((500000.0, 5100000.0, 500300.0, 5100200.0), CRS(32633))
    patch.save(str(tmp_path / "eop"))
    assert validate_eopatch(tmp_path / "eop") == [
        Violation("bbox", "extent 200 x 300 m (H x W) is 20x30 px at 10 m, but data/BANDS is 20x20 px")
    ]


def test_missing_bbox_and_timestamps(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    (patch / "bbox.geojson").unlink()
    (patch / "timestamps.json").unlink()
    assert [v.feature for v in validate_eopatch(patch)] == ["bbox", "timestamps"]


def test_input_size_mismatch(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch(reference=False)
    replace_feature(patch, "mask/IS_DATA", np.ones((T, N, N - 2, 1), bool))
    assert validate_eopatch(patch) == [
        Violation("mask/IS_DATA", "size 20x18 px (H x W), but data/BANDS is 20x20 px")
    ]


def test_reference_at_2x_instead_of_4x(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    for feature_spec in contract.REFERENCE_FEATURES:
        replace_feature(patch, feature_spec.path, np.zeros((2 * N, 2 * N, 1), feature_spec.dtype))
    message = "size 40x40 px (H x W), expected 80x80 px: 4x the input size 20x20 px"
    assert validate_eopatch(patch) == [Violation(s.path, message) for s in contract.REFERENCE_FEATURES]


def test_reference_dtype(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    replace_feature(patch, "mask_timeless/ALL_POLYS", np.zeros((4 * N, 4 * N, 1), np.uint8))
    assert validate_eopatch(patch) == [Violation("mask_timeless/ALL_POLYS", "dtype uint8, expected uint16")]


def test_only_cultivated_present(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    (patch / "mask_timeless" / "NOT_DECLARED.npy.gz").unlink()
    (patch / "mask_timeless" / "ALL_POLYS.npy.gz").unlink()
    message = "missing, while mask_timeless/CULTIVATED is present: a box with reference masks needs all three"
    assert validate_eopatch(patch) == [
        Violation("mask_timeless/NOT_DECLARED", message),
        Violation("mask_timeless/ALL_POLYS", message),
    ]


def test_truncated_gzip_array(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    path = patch / "data" / "BANDS.npy.gz"
    replace_feature(patch, "data/BANDS", np.arange(T * N * N * 12, dtype=np.uint16).reshape(T, N, N, 12))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    [violation] = validate_eopatch(patch)
    assert violation.feature == "data/BANDS"
    assert violation.message.endswith("truncated or corrupt")


def test_truncated_npy_array(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    (patch / "data" / "BANDS.npy.gz").unlink()
    path = patch / "data" / "BANDS.npy"
    write_npy(path, np.zeros((T, N, N, 12), np.uint16))
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    assert validate_eopatch(patch) == [
        Violation(
            "data/BANDS", f"file has {full - 10} bytes, its header promises {full}: truncated or corrupt"
        )
    ]


def test_unreadable_array_header(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    (patch / "mask" / "CLM.npy.gz").write_bytes(b"not gzip at all")
    [violation] = validate_eopatch(patch)
    assert violation.feature == "mask/CLM"
    assert violation.message.startswith("cannot read the array header of CLM.npy.gz:")


def test_feature_stored_twice(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    write_npy(patch / "data" / "BANDS.npy", np.zeros((T, N, N, 12), np.uint16))
    assert validate_eopatch(patch) == [
        Violation(
            "data/BANDS", "stored more than once (BANDS.npy, BANDS.npy.gz); keep one file, using BANDS.npy"
        )
    ]


def test_zarr_feature(write_eopatch: Callable[..., Path]) -> None:
    patch = write_eopatch()
    (patch / "data" / "BANDS.npy.gz").unlink()
    (patch / "data" / "BANDS.zarr").mkdir()
    assert validate_eopatch(patch) == [
        Violation("data/BANDS", "stored as BANDS.zarr: s2agri reads arrays from .npy or .npy.gz files")
    ]


def test_every_violation_is_listed(tmp_path: Path) -> None:
    patch = build_eopatch()
    patch.bbox = BBox((14.5, 46.0, 14.5026, 46.0018), CRS.WGS84)
    patch.save(str(tmp_path / "eop"))
    path = tmp_path / "eop"
    (path / "data" / "BANDS.npy.gz").unlink()
    replace_feature(path, "mask/CLM", np.zeros((T, N, N, 2), np.uint8))
    replace_feature(path, "data/CLP", np.zeros((T + 1, N, N, 1), np.float32))
    assert validate_eopatch(path) == [
        Violation("bbox", NOT_UTM_4326),
        Violation("data/BANDS", "missing: a required input feature"),
        Violation("data/CLP", "dtype float32, expected uint8"),
        Violation("mask/CLM", "shape (3, 20, 20, 2) has 2 channels, expected 1"),
        Violation("data/CLP", "T=4, but mask/CLM has T=3"),
    ]


@pytest.mark.parametrize(("kind", "expected"), [("file", "not a folder"), ("none", "no such folder")])
def test_path_that_is_not_a_folder(tmp_path: Path, kind: str, expected: str) -> None:
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("")
    assert validate_eopatch(path) == [Violation("eopatch", expected)]


def test_folder_that_is_not_an_eopatch(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    assert validate_eopatch(tmp_path) == [
        Violation("eopatch", "not an EOPatch folder: no bbox, timestamps or feature files")
    ]


# --- legacy layout --------------------------------------------------------------------------------


def test_legacy_layout_broken(tmp_path: Path) -> None:
    patch = write_legacy_eopatch(tmp_path / "eopatch-153")
    (patch / "bbox.pkl.gz").write_bytes(gzip.compress(b"this is no pickle"))
    replace_feature(patch, "data/BANDS", np.zeros((T, N, N, 12), np.int16))
    violations = validate_eopatch(patch)
    assert [v.feature for v in violations] == ["bbox", "data/BANDS"]
    assert violations[0].message.startswith("cannot read bbox.pkl.gz: cannot unpickle a sentinelhub BBox (")
    assert violations[0].message.endswith("re-save the EOPatch with eo-learn 1.x")
    assert violations[1] == Violation("data/BANDS", "dtype int16, expected uint16")


def test_legacy_bbox_crs_and_timestamps_count(tmp_path: Path) -> None:
    patch = write_legacy_eopatch(tmp_path / "eopatch-154")
    write_pickle_gz(patch / "bbox.pkl.gz", BBox((14.5, 46.0, 14.5026, 46.0018), CRS.WGS84))
    write_pickle_gz(patch / "timestamp.pkl.gz", [dt.datetime(2019, 3, 1)])
    assert validate_eopatch(patch) == [
        Violation("bbox", NOT_UTM_4326),
        Violation("timestamps", "1 timestamps, but data/BANDS has T=3"),
    ]


def test_legacy_pickle_of_something_else(tmp_path: Path) -> None:
    patch = write_legacy_eopatch(tmp_path / "eopatch-155")
    write_pickle_gz(patch / "bbox.pkl.gz", (500000.0, 5100000.0, 500200.0, 5100200.0))
    assert validate_eopatch(patch) == [
        Violation("bbox", "cannot read bbox.pkl.gz: holds a tuple, not a sentinelhub BBox")
    ]


class _Call:
    """Unpickling this calls ``function(*args)``: a stand-in for a malicious pickle."""

    def __init__(self, function: Callable[..., object], *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.function, self.args


@pytest.mark.parametrize(
    ("function", "extra_args", "name"),
    [
        (os.remove, (), f"{os.remove.__module__}.remove"),
        (write_data, ("overwritten",), "sentinelhub.io_utils.write_data"),
    ],
)
def test_legacy_pickle_cannot_run_code(
    tmp_path: Path, function: Callable[..., object], extra_args: tuple[object, ...], name: str
) -> None:
    """Only classes of sentinelhub and datetime are unpickled, never a function, even from sentinelhub."""
    patch = write_legacy_eopatch(tmp_path / "eopatch-156")
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    write_pickle_gz(patch / "bbox.pkl.gz", _Call(function, str(canary), *extra_args))
    [violation] = validate_eopatch(patch)
    assert canary.read_text() == "still here"
    assert violation.feature == "bbox"
    assert f"UnpicklingError: refusing to load {name})" in violation.message


def test_scan_groups_both_layouts(tmp_path: Path) -> None:
    legacy = scan_eopatch(write_legacy_eopatch(tmp_path / "legacy"))
    assert [p.name for p in legacy.bbox] == ["bbox.pkl.gz"]
    assert [p.name for p in legacy.timestamps] == ["timestamp.pkl.gz"]
    assert set(legacy.features) == {s.feature for s in contract.CONTRACT}

    build_eopatch().save(str(tmp_path / "new"))
    new = scan_eopatch(tmp_path / "new")
    assert [p.name for p in new.bbox] == ["bbox.geojson"]
    assert [p.name for p in new.timestamps] == ["timestamps.json"]
    assert set(new.features) == {s.feature for s in contract.CONTRACT}


def test_validator_agrees_with_eolearn_loading(write_eopatch: Callable[..., Path]) -> None:
    """What the validator accepts, eo-learn loads with the shapes the contract describes."""
    path = write_eopatch()
    assert validate_eopatch(path) == []
    loaded = EOPatch.load(str(path))
    assert loaded.data["BANDS"].shape == (T, N, N, 12)
    assert loaded.mask_timeless["CULTIVATED"].shape == (4 * N, 4 * N, 1)

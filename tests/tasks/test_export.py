"""Submission GeoTIFF and probability COG (s2agri.tasks.export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from eolearn.core import EOPatch
from eopatch_factory import build_eopatch

from s2agri.tasks import contract
from s2agri.tasks.export import ProbabilityCogTask, SubmissionTiffTask, atomic_path
from s2agri.tasks.prediction import BOX_ID_KEY, PRED_CULTIVATED, PRED_OBSERVED, PRED_PROBA, write_prediction

SIZE = 20  # input pixels: 80 x 80 at 2.5 m


def _predicted_patch(seed: int = 0, size: int = SIZE) -> tuple[EOPatch, np.ndarray]:
    patch = build_eopatch(size=size, reference=False)
    proba = np.random.default_rng(seed).random((4 * size, 4 * size)).astype(np.float32)
    proba[0, :3] = [0.0, 1.0, 0.5]
    write_prediction(patch, proba, "test-model")
    return patch, proba


def test_submission_tiff_follows_the_challenge_format(tmp_path: Path) -> None:
    patch, proba = _predicted_patch()

    SubmissionTiffTask(tmp_path).execute(patch, box="eopatch-01")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["eopatch-01.tif"]
    with rasterio.open(tmp_path / "eopatch-01.tif") as src:
        assert src.count == 1
        assert src.dtypes == ("uint8",)
        assert (src.height, src.width) == (4 * SIZE, 4 * SIZE)
        assert src.crs.to_epsg() == contract.CHALLENGE_CRS_EPSG
        minx, _ = patch.bbox.lower_left
        _, maxy = patch.bbox.upper_right
        assert (src.transform.c, src.transform.f) == (minx, maxy)
        assert (src.transform.a, src.transform.e) == (2.5, -2.5)
        assert src.transform.b == src.transform.d == 0
        assert src.compression.name.lower() == "deflate"
        data = src.read(1)
    assert set(np.unique(data)) <= {0, 1}
    np.testing.assert_array_equal(data, (proba >= 0.5).astype(np.uint8))


def test_submission_box_name_from_meta_info_and_template(tmp_path: Path) -> None:
    patch, _ = _predicted_patch()
    patch.meta_info[BOX_ID_KEY] = "eopatch-07"

    SubmissionTiffTask(tmp_path, filename_template="sub_{box}.tif").execute(patch)
    SubmissionTiffTask(tmp_path).execute(patch)  # again: the file is replaced

    assert sorted(p.name for p in tmp_path.iterdir()) == ["eopatch-07.tif", "sub_eopatch-07.tif"]


def test_submission_rejects_bad_input(tmp_path: Path) -> None:
    patch, _ = _predicted_patch()
    patch[PRED_CULTIVATED] = np.zeros((40, 40, 1), bool)  # 5 m pixels
    with pytest.raises(ValueError, match=r"not 2\.5 m"):
        SubmissionTiffTask(tmp_path).execute(patch, box="b")
    patch[PRED_CULTIVATED] = np.full((80, 80, 1), 2, np.uint8)
    with pytest.raises(ValueError, match="other than 0/1"):
        SubmissionTiffTask(tmp_path).execute(patch, box="b")
    patch, _ = _predicted_patch()
    with pytest.raises(ValueError, match="safe file name"):
        SubmissionTiffTask(tmp_path).execute(patch, box="../b")
    with pytest.raises(ValueError, match="without folders"):
        SubmissionTiffTask(tmp_path, filename_template="x/{box}.tif").execute(patch, box="b")
    del patch[PRED_CULTIVATED]
    with pytest.raises(ValueError, match="PRED_CULTIVATED"):
        SubmissionTiffTask(tmp_path).execute(patch, box="b")
    assert list(tmp_path.iterdir()) == []


def test_submission_accepts_an_integer_mask(tmp_path: Path) -> None:
    patch, proba = _predicted_patch()
    patch[PRED_CULTIVATED] = (proba >= 0.5).astype(np.uint8)[..., None]
    SubmissionTiffTask(tmp_path).execute(patch, box="b")
    with rasterio.open(tmp_path / "b.tif") as src:
        np.testing.assert_array_equal(src.read(1), patch[PRED_CULTIVATED][..., 0])


def test_default_box_name_comes_from_the_bbox(tmp_path: Path) -> None:
    patch, _ = _predicted_patch()
    SubmissionTiffTask(tmp_path).execute(patch)
    assert [p.name for p in tmp_path.iterdir()] == ["32633_500000_5100000.tif"]


def test_probability_cog_uint8(tmp_path: Path) -> None:
    patch, proba = _predicted_patch()

    ProbabilityCogTask(tmp_path, blocksize=128, overview_count=2).execute(patch, box="eopatch-01")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["eopatch-01_proba.tif"]
    with rasterio.open(tmp_path / "eopatch-01_proba.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) == [2, 4]
        assert src.dtypes == ("uint8",)
        assert src.profile["tiled"] and src.block_shapes == [(128, 128)]
        assert src.scales[0] == pytest.approx(1 / 254) and src.nodata == 255
        assert src.tags()["model"] == "test-model"
        assert src.crs.to_epsg() == 32633
        assert src.transform.a == 2.5
        data = src.read(1)
    np.testing.assert_array_equal(data, np.rint(proba * np.float32(254)).astype(np.uint8))
    assert data[0, :3].tolist() == [0, 254, 127]
    assert np.abs(data / 254 - proba).max() <= 0.5 / 254 + 1e-7


def test_probability_cog_marks_unobserved_pixels_as_nodata(tmp_path: Path) -> None:
    patch, proba = _predicted_patch()
    observed = np.ones((*proba.shape, 1), bool)
    observed[:4, :8] = False
    patch[PRED_OBSERVED] = observed
    ProbabilityCogTask(tmp_path, blocksize=128).execute(patch, box="u8")
    ProbabilityCogTask(tmp_path, dtype="float32", blocksize=128).execute(patch, box="f32")
    with rasterio.open(tmp_path / "u8_proba.tif") as src:
        data = src.read(1)
        assert src.nodata == 255 and (data[:4, :8] == 255).all() and (data[observed[..., 0]] <= 254).all()
        assert src.read_masks(1)[:4, :8].max() == 0 and src.read_masks(1)[4:].min() == 255
    with rasterio.open(tmp_path / "f32_proba.tif") as src:
        data = src.read(1)
        assert np.isnan(src.nodata) and np.isnan(data[:4, :8]).all()
        np.testing.assert_array_equal(data[4:], proba[4:])


def test_probability_cog_float32_and_automatic_overviews(tmp_path: Path) -> None:
    patch, proba = _predicted_patch(size=80)  # 320 x 320 px: two tiles of 128 across

    ProbabilityCogTask(tmp_path, dtype="float32", blocksize=128).execute(patch, box="b")

    with rasterio.open(tmp_path / "b_proba.tif") as src:
        assert src.dtypes == ("float32",)
        assert src.overviews(1) == [2, 4]  # 160 px, then 80 px < one tile
        np.testing.assert_array_equal(src.read(1), proba)
        overview = src.read(1, out_shape=(80, 80))
    np.testing.assert_allclose(overview, proba.reshape(80, 4, 80, 4).mean(axis=(1, 3)), atol=1e-6)


def test_probability_cog_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        ProbabilityCogTask(tmp_path, dtype="int16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blocksize"):
        ProbabilityCogTask(tmp_path, blocksize=100)
    patch, _ = _predicted_patch()
    patch[PRED_PROBA] = patch[PRED_PROBA] * 2
    with pytest.raises(ValueError, match="outside"):
        ProbabilityCogTask(tmp_path).execute(patch, box="b")
    patch[PRED_PROBA] = np.zeros((80, 80, 1), np.uint8)
    with pytest.raises(ValueError, match="float32"):
        ProbabilityCogTask(tmp_path).execute(patch, box="b")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]

    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]

"""VRT and COG mosaics of per-box GeoTIFFs (s2agri.tasks.mosaic)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from eolearn.core import EOPatch
from rasterio.transform import Affine
from sentinelhub import CRS, BBox

from s2agri.tasks.export import ProbabilityCogTask, SubmissionTiffTask
from s2agri.tasks.mosaic import write_cog_mosaic, write_vrt
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_MODEL_KEY, PRED_PROBA

SIZE = 160  # 2.5 m pixels per box side (400 m boxes): a 2 x 2 mosaic of 320 px has overviews at 128 px
ORIGIN = (500000.0, 5100000.0)


def _patch(row: int, col: int, proba: np.ndarray) -> EOPatch:
    """Box (row, col) of a region grid with PRED_PROBA / PRED_CULTIVATED from ``proba``."""
    left, top = ORIGIN[0] + 2.5 * SIZE * col, ORIGIN[1] - 2.5 * SIZE * row
    patch = EOPatch(bbox=BBox((left, top - 2.5 * SIZE, left + 2.5 * SIZE, top), CRS(32633)))
    patch[PRED_PROBA] = proba[..., None].astype(np.float32)
    patch[PRED_CULTIVATED] = (proba >= 0.5)[..., None]
    patch.meta_info[PRED_MODEL_KEY] = "lgbm"
    return patch


def _region(tmp_path: Path, boxes: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1))) -> dict:
    """Probability COGs and submission GeoTIFFs of a 2 x 2 region, as the prediction run writes them."""
    rng = np.random.default_rng(0)
    proba = rng.random((2 * SIZE, 2 * SIZE))
    proba[:5] = np.linspace(0, 1, 2 * SIZE)  # every quantisation step somewhere
    cogs, masks = [], []
    for row, col in boxes:
        patch = _patch(row, col, proba[row * SIZE : (row + 1) * SIZE, col * SIZE : (col + 1) * SIZE])
        ProbabilityCogTask(tmp_path / "proba", blocksize=128).execute(patch, box=f"b{row}{col}")
        SubmissionTiffTask(tmp_path / "submission").execute(patch, box=f"b{row}{col}")
        cogs.append(tmp_path / "proba" / f"b{row}{col}_proba.tif")
        masks.append(tmp_path / "submission" / f"b{row}{col}.tif")
    return {"proba": proba, "cogs": cogs, "masks": masks}


@pytest.fixture
def region(tmp_path: Path) -> dict:
    (tmp_path / "proba").mkdir()
    (tmp_path / "submission").mkdir()
    return _region(tmp_path)


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(1), {
            "profile": src.profile,
            "scales": src.scales,
            "offsets": src.offsets,
            "tags": src.tags(),
            "overviews": src.overviews(1),
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "transform": src.transform,
        }


def test_vrt_reads_every_tile_at_its_offset(tmp_path: Path, region: dict) -> None:
    vrt = write_vrt(region["cogs"], tmp_path / "proba.vrt")

    data, info = _read(vrt)

    assert data.shape == (2 * SIZE, 2 * SIZE) and data.dtype == np.uint8
    assert info["transform"] == Affine(2.5, 0, ORIGIN[0], 0, -2.5, ORIGIN[1])
    assert info["profile"]["crs"].to_epsg() == 32633
    assert info["scales"] == pytest.approx((1 / 254,)) and info["offsets"] == (0.0,)
    assert info["tags"]["model"] == "lgbm" and "box_id" not in info["tags"]
    for tif in region["cogs"]:
        row, col = int(tif.name[1]), int(tif.name[2])
        tile, _ = _read(tif)
        np.testing.assert_array_equal(
            data[row * SIZE : (row + 1) * SIZE, col * SIZE : (col + 1) * SIZE], tile
        )
    np.testing.assert_array_equal(data, np.rint(region["proba"].astype(np.float32) * np.float32(254)))
    assert 'relativeToVRT="1">proba/b00_proba.tif<' in vrt.read_text()


def test_vrt_moves_with_its_tiles(tmp_path: Path, region: dict) -> None:
    write_vrt(region["masks"], tmp_path / "submission.vrt")
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(tmp_path / "submission", moved / "submission")
    shutil.copy(tmp_path / "submission.vrt", moved / "submission.vrt")
    shutil.rmtree(tmp_path / "submission")

    data, info = _read(moved / "submission.vrt")

    np.testing.assert_array_equal(data, (region["proba"].astype(np.float32) >= 0.5).astype(np.uint8))
    assert info["profile"]["nodata"] is None and info["scales"] == (1.0,)


def test_cog_mosaic_equals_the_vrt_and_is_a_cog(tmp_path: Path, region: dict) -> None:
    vrt = write_vrt(region["cogs"], tmp_path / "proba.vrt")

    cog = write_cog_mosaic(region["cogs"], tmp_path / "proba_mosaic.tif", blocksize=128)

    mosaic, info = _read(cog)
    expected, vrt_info = _read(vrt)
    np.testing.assert_array_equal(mosaic, expected)
    profile = info["profile"]
    assert profile["driver"] == "GTiff" and profile["tiled"] is True
    assert (profile["blockxsize"], profile["blockysize"]) == (128, 128)
    assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and profile["count"] == 1
    assert profile["compress"] == "deflate"
    assert info["layout"] == "COG"
    assert info["overviews"] == [2, 4]  # 320 px halved until it fits in a 128 px tile: 160, 80
    assert info["scales"] == pytest.approx((1 / 254,))
    assert info["transform"] == vrt_info["transform"]
    assert info["tags"]["model"] == "lgbm"
    with rasterio.open(cog) as src:  # the average overview is the 2 x 2 mean of the pixels
        overview = src.read(1, out_shape=(SIZE, SIZE))
    means = mosaic.reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3))
    assert np.abs(overview.astype(float) - means).max() <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "proba",
        "proba.vrt",
        "proba_mosaic.tif",
        "submission",
    ]


def test_cog_mosaic_of_masks_with_mode_overviews(tmp_path: Path, region: dict) -> None:
    cog = write_cog_mosaic(
        region["masks"], tmp_path / "submission.tif", resampling="mode", blocksize=128, cache_mb=16
    )

    data, info = _read(cog)

    np.testing.assert_array_equal(data, (region["proba"].astype(np.float32) >= 0.5).astype(np.uint8))
    assert info["layout"] == "COG" and info["overviews"] == [2, 4] and info["scales"] == (1.0,)
    with rasterio.open(cog) as src:
        assert set(np.unique(src.read(1, out_shape=(SIZE, SIZE)))) <= {0, 1}


def test_a_missing_box_reads_as_nodata(tmp_path: Path) -> None:
    """The probability COGs declare nodata (255), so a box missing from a region is nodata in the mosaic,
    never 0 (= "not cultivated")."""
    (tmp_path / "proba").mkdir()
    (tmp_path / "submission").mkdir()
    region = _region(tmp_path, boxes=((0, 0), (0, 1), (1, 1)))

    vrt, _ = _read(write_vrt(region["cogs"], tmp_path / "proba.vrt"))
    cog, _ = _read(write_cog_mosaic(region["cogs"], tmp_path / "proba.tif"))

    assert vrt.shape == (2 * SIZE, 2 * SIZE)
    assert (vrt[SIZE:, :SIZE] == 255).all() and (vrt[:SIZE, :SIZE] <= 254).all()
    np.testing.assert_array_equal(cog, vrt)


def _write(path: Path, transform: Affine, crs: str = "EPSG:32633", shape: tuple[int, int] = (40, 40)) -> Path:
    profile = {"driver": "GTiff", "width": shape[1], "height": shape[0], "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile) as dst:
        dst.write(np.ones(shape, np.uint8), 1)
    return path


def test_tiles_must_share_crs_resolution_grid_and_not_overlap(tmp_path: Path) -> None:
    base = _write(tmp_path / "a.tif", Affine(2.5, 0, 500000, 0, -2.5, 5100000))
    cases = {
        "one CRS": _write(tmp_path / "crs.tif", Affine(2.5, 0, 500100, 0, -2.5, 5100000), crs="EPSG:32634"),
        "one resolution": _write(tmp_path / "res.tif", Affine(5.0, 0, 500100, 0, -5.0, 5100000)),
        "off the grid": _write(tmp_path / "grid.tif", Affine(2.5, 0, 500101, 0, -2.5, 5100000)),
        "overlap": _write(tmp_path / "over.tif", Affine(2.5, 0, 500050, 0, -2.5, 5100000)),
    }
    for message, other in cases.items():
        with pytest.raises(ValueError, match=message):
            write_vrt([base, other], tmp_path / "bad.vrt")
        with pytest.raises(ValueError, match=message):
            write_cog_mosaic([base, other], tmp_path / "bad.tif")
    with pytest.raises(ValueError, match="resampling"):
        write_cog_mosaic([base], tmp_path / "bad.tif", resampling="median")
    with pytest.raises(ValueError, match="blocksize"):
        write_cog_mosaic([base], tmp_path / "bad.tif", blocksize=100)
    with pytest.raises(ValueError, match="no GeoTIFF"):
        write_vrt([], tmp_path / "bad.vrt")
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".*"))

"""``s2agri run``: a whole region from one config, resume, failures, crash safety and engines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.geometry

from s2agri.workflows import cli

AOI = {
    "type": "FeatureCollection",
    "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
    "features": [
        {
            "type": "Feature",
            "properties": {},
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[450050, 5080050], [450750, 5080050], [450750, 5080350], [450350, 5080750],
                     [450050, 5080750], [450050, 5080050]]
                ],
            },
        }
    ],
}  # fmt: skip
CONFIG = """
aoi: aoi.geojson
grid: {size_m: 400}
source: {seed: 0, frames_min: 6, frames_max: 8}
export: {formats: [gpkg, fgb], mosaics: %s}
"""
MOSAICS = True
BOXES = ["32633_450000_5080000", "32633_450000_5080400", "32633_450400_5080000", "32633_450400_5080400"]


def _config(folder: Path, mosaics: bool = False, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "aoi.geojson").write_text(json.dumps(AOI))
    path = folder / "region.yaml"
    path.write_text(CONFIG % ("true" if mosaics else "false") + extra)
    return path


def _outputs(out: Path) -> dict[str, object]:
    """What a finished region folder holds, comparable across runs."""
    parcels = gpd.read_file(out / "parcels.gpkg", layer="parcels")
    rasters = {}
    for tif in sorted((out / "predict").glob("*/*.tif")):
        with rasterio.open(tif) as src:
            rasters[tif.relative_to(out).as_posix()] = src.read()
    return {"parcels": parcels, "rasters": rasters, "boxes": sorted(p.name for p in (out / "data").iterdir())}


def _assert_same(a: dict, b: dict) -> None:
    assert a["boxes"] == b["boxes"]
    assert list(a["parcels"].columns) == list(b["parcels"].columns) and len(a["parcels"]) == len(b["parcels"])
    assert shapely.equals(a["parcels"].geometry.values, b["parcels"].geometry.values).all()
    np.testing.assert_allclose(a["parcels"]["area_m2"], b["parcels"]["area_m2"])
    assert a["rasters"].keys() == b["rasters"].keys()
    for key in a["rasters"]:
        np.testing.assert_array_equal(a["rasters"][key], b["rasters"][key])


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("region")
    config = _config(folder, mosaics=MOSAICS)
    assert cli.main(["run", str(config), "--out", str(folder / "out")]) == 0
    return folder / "out"


def test_region_outputs(region: Path) -> None:
    summary = json.loads((region / "summary.json").read_text())
    assert summary["boxes"] == summary["done"] == 4 and summary["failed"] == 0
    assert sorted(p.name for p in (region / "data").iterdir()) == BOXES
    assert sorted(p.name for p in (region / "predict" / "eopatches").iterdir()) == BOXES
    grid = gpd.read_file(region / "grid.gpkg")
    assert sorted(grid["name"]) == BOXES and grid.crs.to_epsg() == 32633
    parcels = gpd.read_file(region / "parcels.gpkg", layer="parcels")
    assert parcels.crs.to_epsg() == 32633 and shapely.is_valid(parcels.geometry.values).all()
    assert len(gpd.read_file(region / "parcels.fgb")) == len(parcels) == summary["parcels"]
    geometries = parcels.geometry.values
    left, right = shapely.STRtree(geometries).query(geometries, predicate="intersects")
    pairs = left < right
    assert (
        shapely.area(shapely.intersection(geometries[left[pairs]], geometries[right[pairs]])) < 1e-6
    ).all()
    assert parcels["box_ids"].str.contains(",").any()  # some parcel crosses a box edge and was merged
    aoi = shapely.geometry.shape(AOI["features"][0]["geometry"])
    # clipped to the AOI: every parcel inside it, cut at its outline
    assert shapely.covered_by(parcels.geometry.values, aoi.buffer(1e-6)).all()
    np.testing.assert_allclose(parcels["area_m2"], shapely.area(parcels.geometry.values))
    assert (parcels["area_m2"] >= 400 - 1e-6).all()
    with rasterio.open(region / "mosaic" / "cultivated.tif") as mosaic:
        assert (mosaic.width, mosaic.height) == (2 * 160, 2 * 160) and mosaic.crs.to_epsg() == 32633
        assert mosaic.nodata == 255 and mosaic.dtypes[0] == "uint8"
        outside = rasterio.features.geometry_mask([aoi], (320, 320), mosaic.transform)
        cultivated = mosaic.read(1)
        with rasterio.open(region / "predict" / "submission" / f"{BOXES[1]}.tif") as box:
            north_west = box.read(1)  # the challenge GeoTIFF of the box: 0/1 everywhere
        inside = ~outside[:160, :160] & (cultivated[:160, :160] != 255)
        np.testing.assert_array_equal(cultivated[:160, :160][inside], north_west[inside])
        assert (cultivated[outside] == 255).all() and set(np.unique(cultivated[~outside])) <= {0, 1, 255}
        assert outside[:20].all() and not outside[20:300, 20:140].any()  # the 50 m margin: 20 px
    with rasterio.open(region / "mosaic" / "proba.tif") as proba:
        assert (proba.read(1)[outside] == proba.nodata).all()
    assert (region / "mosaic" / "proba.vrt").is_file()
    assert json.loads((region / "failed.json").read_text()) == {}


def test_region_run_has_a_collection_of_its_boxes(region: Path) -> None:
    import pystac

    collection = pystac.Collection.from_file(str(region / "stac" / "collection.json"))
    assert collection.validate_all() == 4
    assert {"parcels_gpkg", "parcels_fgb", "grid", "summary"} <= set(collection.assets)
    item = next(collection.get_items())
    assert {"probability", "submission", "eopatch", "input"} <= set(item.assets)
    assert Path(item.assets["input"].get_absolute_href()).is_dir()


def test_rerun_needs_resume_and_the_same_config(region: Path, capsys) -> None:
    config = _config(region.parent / "again")
    assert cli.main(["run", str(config), "--out", str(region)]) == 2
    assert "holds an earlier run: add --resume" in capsys.readouterr().err
    other = _config(region.parent / "other", mosaics=MOSAICS, extra="model: ndvi-rule\ngrid: {size_m: 800}\n")
    other.write_text(other.read_text().replace("grid: {size_m: 400}\n", ""))
    assert cli.main(["run", str(other), "--out", str(region), "--resume"]) == 2
    assert "was made with another config (grid.size_m differ)" in capsys.readouterr().err


def test_resume_redoes_nothing_when_done(region: Path, tmp_path: Path) -> None:
    before = _outputs(region)
    config = _config(tmp_path, mosaics=MOSAICS)
    assert cli.main(["run", str(config), "--out", str(region), "--resume"]) == 0
    summary = json.loads((region / "summary.json").read_text())
    assert summary["ran"] == {"data": 0, "predict": 0}
    _assert_same(before, _outputs(region))


def test_failing_box_is_listed_skipped_and_retried(region: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "copy"
    shutil.copytree(region, out)
    broken = BOXES[2]
    shutil.rmtree(out / "predict" / "eopatches" / broken)
    bands = next((out / "data" / broken / "data").glob("BANDS.*"))
    bands.write_bytes(bands.read_bytes()[:100])  # a truncated file
    config = _config(tmp_path, mosaics=MOSAICS)
    assert cli.main(["run", str(config), "--out", str(out), "--resume"]) == 1
    assert "1 boxes failed" in capsys.readouterr().err
    failed = json.loads((out / "failed.json").read_text())
    assert list(failed) == [broken] and failed[broken]["stage"] == "predict"
    assert not (out / "predict" / "eopatches" / broken).exists()
    assert not (out / "predict" / "submission" / f"{broken}.tif").exists()
    assert broken not in ",".join(gpd.read_file(out / "parcels.gpkg")["box_ids"])
    # --resume leaves the failed box out; --retry-failed redoes it (after the data is fixed)
    assert cli.main(["run", str(config), "--out", str(out), "--resume"]) == 1
    assert json.loads((out / "summary.json").read_text())["ran"] == {"data": 0, "predict": 0}
    shutil.rmtree(out / "data" / broken)
    assert cli.main(["run", str(config), "--out", str(out), "--resume", "--retry-failed"]) == 0
    assert json.loads((out / "failed.json").read_text()) == {}
    _assert_same(_outputs(region), _outputs(out))


@pytest.mark.parametrize("stage", ["data", "predict/eopatches"])
def test_kill_9_then_resume_gives_the_same_outputs(region: Path, tmp_path: Path, stage: str) -> None:
    config = _config(tmp_path, mosaics=MOSAICS)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "s2agri.workflows.cli", "run", str(config), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        folder = out / stage
        if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "summary.json").exists()
    assert cli.main(["run", str(config), "--out", str(out), "--resume"]) == 0
    assert not list(out.rglob("*.partial"))
    _assert_same(_outputs(region), _outputs(out))


def test_ray_engine_gives_the_same_outputs(region: Path, tmp_path: Path) -> None:
    import ray  # a dev dependency: the engine is tested for real, never skipped

    config = _config(tmp_path, mosaics=MOSAICS)
    out = tmp_path / "ray"
    try:
        assert cli.main(["run", str(config), "--out", str(out), "--engine", "ray", "--workers", "2"]) == 0
    finally:
        ray.shutdown()
    assert json.loads((out / "summary.json").read_text())["engine"]["kind"] == "ray"
    _assert_same(_outputs(region), _outputs(out))


def test_region_config_rejects_unknown_keys(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, extra="engine: {kind: processes, wrokers: 2}\n")
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "engine.wrokers: Extra inputs are not permitted" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()

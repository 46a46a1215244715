"""STAC collections of the outputs of ``s2agri predict`` and ``s2agri run`` (validated with pystac)."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
import rasterio
from pyproj import Transformer

from s2agri.workflows import cli
from s2agri.workflows.simulate import simulate_region


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stac-out")
    simulate_region(folder / "data", boxes=2, size=40, seed=0, frames_min=6, frames_max=8)
    boxes = [str(p) for p in sorted((folder / "data" / "eopatches").iterdir())]
    assert cli.main(["predict", *boxes, "--model", "ndvi-rule", "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_predict_run_has_a_valid_relative_collection(predicted: Path, tmp_path: Path) -> None:
    collection = pystac.Collection.from_file(str(predicted / "stac" / "collection.json"))
    assert collection.validate_all() == 2  # both items, against the core schemas pystac ships
    items = sorted(collection.get_items(), key=lambda item: item.id)
    assert [item.id for item in items] == ["box-000", "box-001"]
    item = items[0]
    assert set(item.assets) == {"probability", "submission", "eopatch", "input"}
    assert item.assets["probability"].media_type.endswith("profile=cloud-optimized")
    raw = json.loads((predicted / "stac" / "box-000" / "box-000.json").read_text())
    assert raw["assets"]["probability"]["href"] == "../../proba/box-000_proba.tif"  # relative: movable
    assert {link["rel"] for link in raw["links"]} >= {"root", "parent"}
    assert all(not link["href"].startswith("/") for link in raw["links"])
    # footprint: the COG's bounds in WGS84; season: the input's first and last acquisition
    with rasterio.open(predicted / "proba" / "box-000_proba.tif") as src:
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        west, south = to_wgs84.transform(src.bounds.left, src.bounds.bottom)
        assert item.properties["s2agri:epsg"] == src.crs.to_epsg() == 32633
    assert item.bbox[0] == pytest.approx(west, abs=1e-4) and item.bbox[1] == pytest.approx(south, abs=1e-4)
    start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
    assert item.datetime is None and start.year == end.year and start < end
    assert set(collection.assets) >= {"parcels", "run", "config", "model_card"}
    top = json.loads((predicted / "stac" / "collection.json").read_text())
    assert top["id"] == "s2agri-run"  # the published name, not the staging folder's
    assert top["assets"]["parcels"]["href"] == "../parcels.gpkg"
    assert not any(asset["href"].startswith("/") for asset in top["assets"].values())
    assert ".tmp-" not in json.dumps(top)
    assert collection.extent.temporal.intervals[0][0] <= start
    moved = tmp_path / "moved"
    predicted.rename(moved)
    try:
        again = pystac.Collection.from_file(str(moved / "stac" / "collection.json"))
        target = next(again.get_items()).assets["probability"].get_absolute_href()
        assert Path(target).is_file() and str(target).startswith(str(moved))
        assert Path(again.assets["parcels"].get_absolute_href()) == moved / "parcels.gpkg"
    finally:
        moved.rename(predicted)
    assert not list(predicted.glob(".stac-partial-*"))

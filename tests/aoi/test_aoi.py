"""Areas of interest: reading, checks, the UTM grid split, box bboxes and ``s2agri aoi split``."""

from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from sentinelhub import CRS, BBox

from s2agri.aoi import DEFAULT_MAX_BOXES, DEFAULT_SIZE_M, demo_aoi_path
from s2agri.aoi.grid import (
    GRID_COLUMNS,
    aoi_utm_zones,
    box_bbox,
    check_aoi,
    read_aoi,
    split_aoi,
    utm_zone_epsg,
    write_grid,
)
from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows import cli

#: An L in EPSG:32633 over the 5 km cells (450000, 5080000), (455000, 5080000) and (450000, 5085000);
#: its bounds also cover (455000, 5085000), which it does not touch.
L_SHAPE = shapely.Polygon(
    [
        (451000, 5081000),
        (459000, 5081000),
        (459000, 5084000),
        (454000, 5084000),
        (454000, 5088000),
        (451000, 5088000),
    ]
)
#: Area of the L inside each cell (m²), by hand: bottom bar 8000 x 3000 m, upright 3000 x 4000 m.
L_CELL_AREAS = {
    "32633_450000_5080000": 4000 * 3000 + 3000 * 1000,  # bar x 451-455 km, upright y 5084-5085 km
    "32633_455000_5080000": 4000 * 3000,  # bar x 455-459 km
    "32633_450000_5085000": 3000 * 3000,  # upright y 5085-5088 km
}
#: A bow tie: its two edges cross at (450500, 5080500).
BOW_TIE = shapely.Polygon([(450000, 5080000), (451000, 5081000), (451000, 5080000), (450000, 5081000)])


def utm33(*geometries: shapely.Geometry) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"id": range(len(geometries))}, geometry=list(geometries), crs="EPSG:32633")


def wgs84(*geometries: shapely.Geometry) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"id": range(len(geometries))}, geometry=list(geometries), crs="EPSG:4326")


def input_error(match: str) -> pytest.RaisesContext[S2AgriInputError]:
    return pytest.raises(S2AgriInputError, match=match)


# --- split -------------------------------------------------------------------------------------------


def test_split_l_shape_keeps_the_three_cells_it_covers() -> None:
    grid = split_aoi(utm33(L_SHAPE))
    assert list(grid.columns) == list(GRID_COLUMNS)
    assert grid["name"].tolist() == list(L_CELL_AREAS)  # south to north, then west to east
    assert grid.crs.to_epsg() == 32633
    assert (grid["epsg"] == 32633).all()
    expected = [area / 5000**2 for area in L_CELL_AREAS.values()]
    assert grid["aoi_fraction"].to_numpy() == pytest.approx([0.6, 0.48, 0.36])
    assert grid["aoi_fraction"].to_numpy() == pytest.approx(expected)
    assert grid[["min_x", "min_y", "max_x", "max_y"]].to_numpy().tolist() == [
        [450000, 5080000, 455000, 5085000],
        [455000, 5080000, 460000, 5085000],
        [450000, 5085000, 455000, 5090000],
    ]
    assert all(
        geom.equals(shapely.box(*row))
        for geom, row in zip(grid.geometry, grid.iloc[:, 2:6].to_numpy(), strict=True)
    )
    # the boxes weighted by their share hold the whole AOI
    assert (grid["aoi_fraction"] * 5000**2).sum() == pytest.approx(L_SHAPE.area)


def test_boxes_are_aligned_to_multiples_of_the_size() -> None:
    aoi = utm33(shapely.Polygon([(452345.6, 5081234.5), (461987.1, 5083456.7), (455555.5, 5089876.5)]))
    grid = split_aoi(aoi, size_m=2000)
    assert len(grid) > 5
    for column in ("min_x", "min_y", "max_x", "max_y"):
        assert (grid[column] % 2000 == 0).all()
    assert ((grid["max_x"] - grid["min_x"]) == 2000).all() and ((grid["max_y"] - grid["min_y"]) == 2000).all()
    assert grid["name"].tolist() == [
        f"32633_{x}_{y}" for x, y in zip(grid["min_x"], grid["min_y"], strict=True)
    ]
    assert grid["name"].is_unique
    # every box shares area with the AOI, and together they cover it
    assert (grid["aoi_fraction"] > 0).all() and (grid["aoi_fraction"] <= 1).all()
    assert shapely.union_all(grid.geometry.to_numpy()).contains(aoi.geometry[0])


def test_a_box_only_touching_the_aoi_is_left_out() -> None:
    grid = split_aoi(utm33(shapely.box(455000, 5080000, 460000, 5085000)))
    assert grid["name"].tolist() == ["32633_455000_5080000"]
    assert grid["aoi_fraction"].tolist() == [1.0]


def test_names_are_stable_across_aois_sharing_a_cell() -> None:
    first = split_aoi(utm33(L_SHAPE))
    other = split_aoi(utm33(shapely.box(453000, 5086000, 457000, 5092000)))
    assert other["name"].tolist() == [
        "32633_450000_5085000",
        "32633_455000_5085000",
        "32633_450000_5090000",
        "32633_455000_5090000",
    ]
    shared = set(first["name"]) & set(other["name"])
    assert shared == {"32633_450000_5085000"}
    a, b = (
        first.set_index("name").loc["32633_450000_5085000"],
        other.set_index("name").loc["32633_450000_5085000"],
    )
    assert a.geometry.equals(b.geometry)
    assert (
        a[["min_x", "min_y", "max_x", "max_y"]].tolist() == b[["min_x", "min_y", "max_x", "max_y"]].tolist()
    )
    assert (a["aoi_fraction"], b["aoi_fraction"]) == pytest.approx((0.36, 2000 * 4000 / 5000**2))


def test_buffer_grows_the_geometry_only() -> None:
    plain = split_aoi(utm33(L_SHAPE))
    buffered = split_aoi(utm33(L_SHAPE), buffer_m=100)
    pd.testing.assert_frame_equal(plain.drop(columns="geometry"), buffered.drop(columns="geometry"))
    assert buffered.geometry[0].equals(shapely.box(449900, 5079900, 455100, 5085100))
    assert buffered.area.tolist() == [5200.0**2] * 3
    # neighbours overlap by twice the buffer
    assert buffered.geometry[0].intersection(buffered.geometry[1]).bounds == (
        454900,
        5079900,
        455100,
        5085100,
    )


def test_multipolygon_and_overlapping_features_count_once() -> None:
    square = shapely.box(451000, 5081000, 453000, 5083000)
    grid = split_aoi(utm33(square, square, shapely.box(461000, 5081000, 462000, 5082000)))
    assert grid["name"].tolist() == ["32633_450000_5080000", "32633_460000_5080000"]
    assert grid["aoi_fraction"].tolist() == pytest.approx([4e6 / 25e6, 1e6 / 25e6])


def test_sparse_aoi_over_a_huge_empty_grid_is_fast() -> None:
    # 300 km apart at 100 m: the bounding grid has 9 million cells, the AOI touches 7
    aoi = utm33(shapely.box(400050, 5000050, 400150, 5000250), shapely.box(700010, 5300010, 700020, 5300020))
    start = time.perf_counter()
    grid = split_aoi(aoi, size_m=100)
    assert time.perf_counter() - start < 5
    assert grid["name"].tolist() == [
        "32633_400000_5000000",
        "32633_400100_5000000",
        "32633_400000_5000100",
        "32633_400100_5000100",
        "32633_400000_5000200",
        "32633_400100_5000200",
        "32633_700000_5300000",
    ]
    assert grid["aoi_fraction"].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.25, 0.25, 0.01])


def test_southern_hemisphere_names_carry_the_327xx_code() -> None:
    aoi = check_aoi(wgs84(shapely.box(-47.01, -15.81, -46.99, -15.79)), crs="auto")
    assert aoi.crs.to_epsg() == 32723
    grid = split_aoi(aoi, size_m=1000)
    assert grid["name"].str.startswith("32723_").all() and (grid["epsg"] == 32723).all()


# --- the max_boxes guard -----------------------------------------------------------------------------


def test_more_boxes_than_max_needs_confirmation() -> None:
    aoi = utm33(shapely.box(400000, 5000000, 460000, 5060000))  # 60 x 60 km
    with input_error(r"at least 3600 boxes of 1000 m, more than --max-boxes 1000: add --yes"):
        split_aoi(aoi, size_m=1000)
    grid = split_aoi(aoi, size_m=1000, confirm_large=True)
    assert len(grid) == 3600 and (grid["aoi_fraction"] == 1).all()
    assert DEFAULT_MAX_BOXES == 1000 and DEFAULT_SIZE_M == 5000


def test_max_boxes_counts_the_boxes_kept() -> None:
    # the L's area fits in 2 boxes, but it touches 3
    with input_error(r"splits into 3 boxes of 5000 m, more than --max-boxes 2"):
        split_aoi(utm33(L_SHAPE), max_boxes=2)
    assert len(split_aoi(utm33(L_SHAPE), max_boxes=3)) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_m": 5005}, r"--size 5005 m is not a whole multiple of 10 m"),
        ({"size_m": 0}, r"--size 0 m is not a whole multiple of 10 m of at least 10 m"),
        ({"buffer_m": -10}, r"--buffer -10 m is not a whole multiple"),
        ({"buffer_m": 15}, r"--buffer 15 m is not a whole multiple"),
        ({"max_boxes": 0}, r"--max-boxes 0 is below 1"),
    ],
)
def test_bad_split_parameters(kwargs: dict[str, int], message: str) -> None:
    with input_error(message):
        split_aoi(utm33(L_SHAPE), **kwargs)


def test_split_refuses_an_aoi_not_in_utm() -> None:
    with input_error(r"the AOI has CRS EPSG:4326, not WGS84 / UTM: .*--crs auto"):
        split_aoi(wgs84(shapely.box(14.9, 45.9, 15.1, 46.1)))


# --- checks ------------------------------------------------------------------------------------------


def test_check_keeps_a_good_utm_aoi_and_drops_empty_features() -> None:
    aoi = utm33(L_SHAPE, shapely.Polygon(), None)
    checked = check_aoi(aoi)
    assert checked.crs.to_epsg() == 32633
    assert checked["id"].tolist() == [0]
    assert checked.geometry[0].equals(L_SHAPE)


def test_no_features() -> None:
    with input_error(r"the AOI has no features: give a file with at least one polygon"):
        check_aoi(gpd.GeoDataFrame(geometry=[], crs="EPSG:32633"))


def test_all_geometries_empty() -> None:
    with input_error(r"all 2 AOI geometries are empty"):
        check_aoi(utm33(shapely.Polygon(), None))


def test_invalid_polygons_need_repair() -> None:
    aoi = utm33(BOW_TIE, L_SHAPE)
    with input_error(
        r"1 of 2 AOI polygons are invalid \(first: Self-intersection\[450500 5080500\]\): add --repair"
    ):
        check_aoi(aoi)
    with input_error(r"1 of 2 AOI polygons are invalid"):
        split_aoi(aoi)
    repaired = check_aoi(aoi, repair=True)
    assert repaired.geometry[0].geom_type == "MultiPolygon" and repaired.geometry[0].is_valid
    assert repaired.geometry[0].area == pytest.approx(500_000)  # two triangles of 1000 x 500 m
    assert split_aoi(repaired)["name"].tolist() == list(L_CELL_AREAS)


def test_repair_of_a_polygon_without_area() -> None:
    with input_error(r"the AOI polygons have no area"):
        check_aoi(utm33(shapely.Polygon([(0, 0), (1, 1), (2, 2), (0, 0)])), repair=True)


def test_non_polygonal_geometries() -> None:
    aoi = utm33(
        shapely.Point(450000, 5080000), shapely.LineString([(450000, 5080000), (451000, 5081000)]), L_SHAPE
    )
    with input_error(r"the AOI holds 2 non-polygonal geometries \(1 point, 1 linestring\): .*give polygons"):
        check_aoi(aoi)


def test_no_crs() -> None:
    with input_error(r"the AOI has no CRS: set it in the file \(e.g. ogr2ogr -a_srs EPSG:32633"):
        check_aoi(gpd.GeoDataFrame(geometry=[L_SHAPE]))


def test_geographic_crs_names_the_utm_zone() -> None:
    aoi = wgs84(shapely.box(14.9, 45.9, 15.1, 46.1))  # near 15°E 46°N
    with input_error(
        r"the AOI is in a geographic CRS \(EPSG:4326, degrees\) .* UTM zone 33N \(EPSG:32633\): "
        r"add --crs auto to reproject it there, or reproject the file to EPSG:32633"
    ):
        check_aoi(aoi)
    utm = check_aoi(aoi, crs="auto")
    assert utm.crs.to_epsg() == 32633
    west, south, east, north = utm.total_bounds
    assert 490000 < west < east < 510000 and 5080000 < south < north < 5110000
    assert check_aoi(aoi, crs="EPSG:32633").geometry[0].equals(utm.geometry[0])
    assert split_aoi(utm)["name"].tolist()[0] == "32633_490000_5080000"


def test_other_projected_crs_names_the_utm_zone() -> None:
    aoi = wgs84(shapely.box(14.9, 45.9, 15.1, 46.1)).to_crs("EPSG:3035")
    with input_error(r"CRS EPSG:3035 is not WGS84 / UTM.* zone 33N \(EPSG:32633\): add --crs auto"):
        check_aoi(aoi)
    assert check_aoi(aoi, crs="auto").crs.to_epsg() == 32633


def test_auto_moves_a_utm_aoi_to_its_own_zone() -> None:
    aoi = wgs84(shapely.box(14.9, 45.9, 15.1, 46.1)).to_crs("EPSG:32634")
    assert check_aoi(aoi).crs.to_epsg() == 32634  # kept as given (a warning is logged)
    assert check_aoi(aoi, crs="auto").crs.to_epsg() == 32633


def test_aoi_spanning_several_utm_zones() -> None:
    aoi = wgs84(shapely.box(17.5, 45.9, 18.7, 46.1))  # 18°E is the border of zones 33 and 34
    assert aoi_utm_zones(aoi) == [32634, 32633]  # largest share first
    message = (
        r"the AOI spans UTM zones 33N \(EPSG:32633\) and 34N \(EPSG:32634\) but a grid lies in one zone: "
        r"split the AOI per zone and split each part, or force one zone with --crs EPSG:32634"
    )
    with input_error(message):
        check_aoi(aoi)
    with input_error(message):
        check_aoi(aoi, crs="auto")
    with input_error(message):
        check_aoi(aoi.to_crs("EPSG:32633"))  # also when the file is in UTM already
    forced = check_aoi(aoi, crs="EPSG:32633")
    assert forced.crs.to_epsg() == 32633
    assert len(split_aoi(forced)) > 0
    with input_error(r"--crs EPSG:32636 is UTM zone 36, 2 zones away from the AOI"):
        check_aoi(aoi, crs="EPSG:32636")


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3035", "nonsense"])
def test_crs_option_must_be_utm(crs: str) -> None:
    with input_error(rf"--crs {crs} is not a WGS84 / UTM CRS: give auto"):
        check_aoi(utm33(L_SHAPE), crs=crs)


def test_aoi_outside_utm_latitudes() -> None:
    with input_error(r"reaches latitude 84.50°, outside UTM"):
        check_aoi(wgs84(shapely.box(14.9, 84.1, 15.1, 84.5)), crs="auto")


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [(15.0, 46.0, 32633), (18.0, 46.0, 32634), (-47.0, -15.8, 32723), (-180.0, 0.0, 32601)],
)
def test_utm_zone_epsg(lon: float, lat: float, epsg: int) -> None:
    assert utm_zone_epsg(lon, lat) == epsg


# --- box bboxes --------------------------------------------------------------------------------------


def test_box_bbox_from_any_row_kind() -> None:
    grid = split_aoi(utm33(L_SHAPE), buffer_m=100)
    expected = BBox((450000, 5080000, 455000, 5085000), crs=CRS(32633))
    for row in (grid.iloc[0], next(grid.itertuples()), grid.iloc[0].to_dict()):
        bbox = box_bbox(row)
        assert bbox == expected and bbox.crs == CRS.UTM_33N
    assert box_bbox(grid.iloc[0], buffered=True) == BBox((449900, 5079900, 455100, 5085100), crs=CRS(32633))


def test_a_grid_box_feeds_the_simulator() -> None:
    from s2agri.tasks.sources.simulator.task import SimulatorInputTask

    grid = split_aoi(check_aoi(read_aoi(demo_aoi_path())), size_m=400)
    patch = SimulatorInputTask(0, frames_min=2, frames_max=2).execute(bbox=box_bbox(grid.iloc[0]))
    assert patch.bbox == box_bbox(grid.iloc[0])
    assert patch.data["BANDS"].shape[1:3] == (40, 40)


# --- the demo AOI ------------------------------------------------------------------------------------


def test_demo_aoi_loads_and_splits() -> None:
    path = demo_aoi_path()
    assert path.is_file() and path.suffix == ".geojson"
    aoi = check_aoi(read_aoi(path))
    assert aoi.crs.to_epsg() == 32633 and len(aoi) == 1
    assert aoi.geometry[0].area == pytest.approx(55.155e6)
    west, south, east, north = aoi.total_bounds
    assert 450000 <= west < east <= 470000 and 5080000 <= south < north <= 5090000
    grid = split_aoi(aoi)
    assert grid["name"].tolist() == [
        "32633_450000_5080000",
        "32633_455000_5080000",
        "32633_460000_5080000",
        "32633_450000_5085000",
        "32633_455000_5085000",
    ]
    assert (grid["aoi_fraction"] * 25e6).sum() == pytest.approx(55.155e6)


# --- reading and writing -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp", ".fgb", ".parquet"])
def test_read_aoi_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"aoi{suffix}"
    frame = utm33(L_SHAPE)
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_file(path, engine="pyogrio")
    aoi = read_aoi(path)
    assert aoi.crs.to_epsg() == 32633
    assert aoi.geometry[0].normalize().equals(L_SHAPE.normalize())


def test_read_aoi_layers(tmp_path: Path) -> None:
    path = tmp_path / "aoi.gpkg"
    utm33(L_SHAPE).to_file(path, layer="fields", engine="pyogrio")
    utm33(shapely.box(450000, 5080000, 451000, 5081000)).to_file(path, layer="farm", engine="pyogrio")
    with input_error(r"has 2 layers \(fields, farm\): choose one with --layer"):
        read_aoi(path)
    with input_error(r"has no layer 'wood': choose one of fields, farm with --layer"):
        read_aoi(path, layer="wood")
    assert read_aoi(path, layer="farm").geometry[0].area == 1e6


def test_read_aoi_bad_files(tmp_path: Path) -> None:
    with input_error(r"does not exist"):
        read_aoi(tmp_path / "missing.gpkg")
    (tmp_path / "bad.geojson").write_text("{nonsense", encoding="utf-8")
    with input_error(r"cannot read AOI .*bad.geojson as a vector file"):
        read_aoi(tmp_path / "bad.geojson")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "plain.parquet")
    with input_error(r"cannot read AOI .*plain.parquet as GeoParquet"):
        read_aoi(tmp_path / "plain.parquet")


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".fgb", ".parquet"])
def test_write_grid_round_trip(tmp_path: Path, suffix: str) -> None:
    grid = split_aoi(utm33(L_SHAPE), buffer_m=100)
    path = write_grid(grid, tmp_path / f"grid{suffix}")
    back = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path, engine="pyogrio")
    assert back.crs.to_epsg() == 32633
    # GeoJSON reads small integers back as int32
    pd.testing.assert_frame_equal(
        back.drop(columns="geometry"), grid.drop(columns="geometry"), check_dtype=False
    )
    assert all(a.equals(b) for a, b in zip(back.geometry, grid.geometry, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"grid{suffix}"]  # no temporary left
    with input_error(r"exists: choose another path or add --overwrite"):
        write_grid(grid, path)
    write_grid(grid.iloc[:1], path, overwrite=True)
    assert len(gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)) == 1


def test_write_grid_refuses_shapefiles(tmp_path: Path) -> None:
    with input_error(r"a Shapefile cuts column names such as aoi_fraction"):
        write_grid(split_aoi(utm33(L_SHAPE)), tmp_path / "grid.shp")
    assert not any(tmp_path.iterdir())


# --- command line ------------------------------------------------------------------------------------


def test_cli_split_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.gpkg"
    assert cli.main(["aoi", "split", str(demo_aoi_path()), "--size", "5000", "--out", str(out)]) == 0
    assert capsys.readouterr().out == (
        "split the AOI (55.16 km²) into 5 boxes of 5000 m (buffer 0 m, EPSG:32633, 125.00 km² in all): "
        f"wrote {out}\n"
    )
    grid = gpd.read_file(out, layer="grid", engine="pyogrio")
    assert grid["name"].tolist()[0] == "32633_450000_5080000" and len(grid) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.gpkg"]
    # 'demo' names the same shipped AOI, as in a region config
    by_name = tmp_path / "by-name.gpkg"
    assert cli.main(["aoi", "split", "demo", "--out", str(by_name)]) == 0
    assert "into 5 boxes of 5000 m" in capsys.readouterr().out
    assert gpd.read_file(by_name, layer="grid")["name"].tolist() == grid["name"].tolist()


def test_cli_split_geographic_with_crs_auto_and_buffer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aoi = tmp_path / "aoi.geojson"
    wgs84(shapely.box(14.99, 45.99, 15.01, 46.01)).to_file(aoi, engine="pyogrio")
    out = tmp_path / "grid.geojson"
    args = ["aoi", "split", str(aoi), "--size", "1000", "--buffer", "50", "--crs", "auto", "--out", str(out)]
    assert cli.main(args) == 0
    assert "boxes of 1000 m (buffer 50 m, EPSG:32633" in capsys.readouterr().out
    grid = gpd.read_file(out, engine="pyogrio")
    assert grid.crs.to_epsg() == 32633
    assert np.allclose(grid.area, 1100.0**2)


@pytest.mark.parametrize(
    ("geometries", "crs", "extra", "message"),
    [
        ([], "EPSG:32633", [], "the AOI has no features"),
        ([shapely.Polygon()], "EPSG:32633", [], "all 1 AOI geometries are empty"),
        ([BOW_TIE], "EPSG:32633", [], "1 of 1 AOI polygons are invalid"),
        ([shapely.Point(450000, 5080000)], "EPSG:32633", [], "non-polygonal geometries (1 point)"),
        (
            [shapely.box(14.9, 45.9, 15.1, 46.1)],
            "EPSG:4326",
            [],
            "lies in UTM zone 33N (EPSG:32633): add --crs auto",
        ),
        ([shapely.box(17.5, 45.9, 18.5, 46.1)], "EPSG:4326", ["--crs", "auto"], "spans UTM zones 33N"),
        (
            [shapely.box(400000, 5000000, 460000, 5060000)],
            "EPSG:32633",
            [],
            "more than --max-boxes 1000: add --yes",
        ),
        ([L_SHAPE], "EPSG:32633", ["--size", "5005"], "--size 5005 m is not a whole multiple"),
        ([L_SHAPE], "EPSG:32633", ["--crs", "EPSG:4326"], "--crs EPSG:4326 is not a WGS84 / UTM CRS"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    geometries: list[shapely.Geometry],
    crs: str,
    extra: list[str],
    message: str,
) -> None:
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame({"id": range(len(geometries))}, geometry=geometries, crs=crs).to_file(
        aoi, engine="pyogrio"
    )
    size = [] if "--size" in extra else ["--size", "1000" if "max-boxes" in message else "5000"]
    assert cli.main(["aoi", "split", str(aoi), *size, *extra, "--out", str(tmp_path / "grid.gpkg")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2agri: error: ") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aoi.gpkg"]


@pytest.mark.filterwarnings("ignore:'crs' was not provided:UserWarning")
def test_cli_no_crs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aoi = tmp_path / "aoi.shp"
    gpd.GeoDataFrame({"id": [0]}, geometry=[L_SHAPE]).to_file(aoi, engine="pyogrio")  # no .prj
    assert cli.main(["aoi", "split", str(aoi), "--out", str(tmp_path / "grid.gpkg")]) == 2
    assert capsys.readouterr().err.startswith("s2agri: error: the AOI has no CRS")
    assert not (tmp_path / "grid.gpkg").exists()


def test_cli_yes_repair_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aoi = tmp_path / "aoi.gpkg"
    utm33(BOW_TIE, shapely.box(400000, 5000000, 460000, 5060000)).to_file(aoi, engine="pyogrio")
    out = tmp_path / "grid.fgb"
    base = ["aoi", "split", str(aoi), "--size", "1000", "--out", str(out), "--repair"]
    assert cli.main([*base, "--yes"]) == 0
    assert "into 3601 boxes of 1000 m" in capsys.readouterr().out  # 60 x 60 km and the bow tie's cell
    assert cli.main([*base, "--yes"]) == 2
    assert capsys.readouterr().err == f"s2agri: error: {out} exists: choose another path or add --overwrite\n"
    assert cli.main([*base, "--max-boxes", "5000", "--overwrite"]) == 0
    assert len(gpd.read_file(out, engine="pyogrio")) == 3601


def test_cli_existing_output_is_checked_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid.geojson"
    out.write_text("keep me", encoding="utf-8")
    assert cli.main(["aoi", "split", str(tmp_path / "missing.gpkg"), "--out", str(out)]) == 2
    assert "exists: choose another path or add --overwrite" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "keep me"


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["aoi"]) == 2
    assert "required: ACTION" in capsys.readouterr().err
    assert cli.main(["aoi", "split", "aoi.gpkg"]) == 2
    assert "required: --out" in capsys.readouterr().err
    assert cli.main(["aoi", "split", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(
        flag in help_text for flag in ("--size", "--buffer", "--layer", "--crs", "--max-boxes", "--yes")
    )


def test_an_aoi_too_large_to_split_is_refused_even_with_yes() -> None:
    """--yes lifts --max-boxes, not memory: 9 million 100 m boxes were a MemoryError."""
    aoi = utm33(shapely.box(300000, 4700000, 600000, 5000000))
    with pytest.raises(S2AgriInputError, match=r"more than s2agri splits at once .*split the AOI into parts"):
        split_aoi(aoi, size_m=100, max_boxes=10**12, confirm_large=True)

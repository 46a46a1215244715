"""The Sentinel-2 L2A scene simulator against the issue spec: contract, determinism, landscape,
reference rasterisation, sensor physics, clouds, phenology and the ``s2agri simulate`` command.

Boxes are small (40-100 px) and simulated once per module; the whole file runs in well under a minute.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
from eolearn.core import EOPatch
from rasterio.transform import from_origin, rowcol
from scipy import ndimage, stats
from scipy.signal import argrelmin

from s2agri.tasks import contract
from s2agri.tasks.reference import RasteriseReferenceTask
from s2agri.tasks.sources.simulator import (
    BoxSimulator,
    acquisition_dates,
    box_bbox,
    generate_landscape,
    max_frames,
    scene,
)
from s2agri.tasks.sources.simulator.phenology import ARCHETYPE_OF_LABEL, ParcelParameters, endmember_fractions
from s2agri.tasks.sources.simulator.scene import SCENE_MARGIN_M
from s2agri.tasks.sources.simulator.sensor import PSF_SIGMA_M
from s2agri.tasks.sources.simulator.spectra import ENDMEMBER_SPECTRA, NOISE_SIGMA, Endmember
from s2agri.workflows import cli
from s2agri.workflows.validate import validate_eopatch

SEED = 7
SIZE = 80  #: main test box: 80 x 80 px at 10 m (800 m), reference 320 x 320 px
FRAMES = (40, 48)  #: many frames (within the contract's 19..48) so that clear and overcast dates occur
NON_FARMLAND = (2000, 3000, 7000, 4100, 4210, 4220)  #: forest, built-up, water, wetlands
SEASON = (dt.datetime(2019, 3, 1), dt.datetime(2019, 9, 2))  #: [start, end) of acquisition datetimes
B = contract.BAND_INDEX


# --- shared simulations ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> BoxSimulator:
    return BoxSimulator(box_bbox(0, SIZE), SEED, *FRAMES)


@pytest.fixture(scope="module")
def patch(sim: BoxSimulator) -> EOPatch:
    """The main box with its reference masks, simulated with one thread."""
    return RasteriseReferenceTask().execute(sim.eopatch(threads=1))


@pytest.fixture(scope="module")
def saved_patch(patch: EOPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("simulated") / "box-000"
    patch.save(str(path))
    return path


@pytest.fixture(scope="module")
def world() -> gpd.GeoDataFrame:
    """A 10 km x 5 km landscape (polygons only, cheap)."""
    return generate_landscape(2, (450000.0, 5080000.0, 460000.0, 5085000.0))


@pytest.fixture(scope="module")
def clear_frame(sim: BoxSimulator) -> int:
    """A frame of the main box without cloud, shadow, haze or missing data."""
    for t, when in enumerate(sim.dates):
        alpha, shadow, haze = scene._cloud_fields(SEED, sim.grid, when)
        valid = scene._no_data(SEED, sim.grid, when)
        if alpha.max() == 0 and shadow.max() == 0 and haze.max() == 0 and valid.all():
            return t
    pytest.fail("the main box has no perfectly clear frame")


def _temporal(patch: EOPatch, feature: tuple) -> np.ndarray:
    return patch[feature][..., 0]


# --- 1. contract ---------------------------------------------------------------------------------------


def test_patch_has_every_contract_feature_with_exact_dtype_and_shape(patch: EOPatch) -> None:
    T = len(patch.timestamps)
    assert FRAMES[0] <= T <= FRAMES[1]
    assert contract.MIN_FRAMES <= T <= contract.MAX_FRAMES
    for spec in contract.CONTRACT:
        array = patch[spec.feature]
        expected = {
            "temporal": (T, SIZE, SIZE, spec.channels),
            "scalar": (T, spec.channels),
            "timeless_reference": (contract.SCALE * SIZE, contract.SCALE * SIZE, spec.channels),
        }[spec.kind]
        assert array.dtype == spec.dtype, spec.path
        assert array.shape == expected, spec.path
    np.testing.assert_array_equal(patch[contract.NORM_FACTORS], np.float32(1e-4))
    assert patch.bbox.crs.epsg == contract.CHALLENGE_CRS_EPSG == 32633
    assert (patch.bbox.max_x - patch.bbox.min_x, patch.bbox.max_y - patch.bbox.min_y) == (
        SIZE * 10,
        SIZE * 10,
    )
    assert patch[contract.REFERENCE].crs.to_epsg() == 32633
    assert set(patch[contract.REFERENCE].columns) >= {"id", "label", "geometry"}


def test_saved_patch_is_valid(saved_patch: Path) -> None:
    assert validate_eopatch(saved_patch) == []


def test_save_load_round_trip_is_exact(patch: EOPatch, saved_patch: Path) -> None:
    loaded = EOPatch.load(str(saved_patch))
    assert loaded.bbox == patch.bbox
    assert loaded.timestamps == patch.timestamps
    for spec in contract.CONTRACT:
        assert loaded[spec.feature].dtype == patch[spec.feature].dtype, spec.path
        np.testing.assert_array_equal(loaded[spec.feature], patch[spec.feature], err_msg=spec.path)
    before, after = patch[contract.REFERENCE], loaded[contract.REFERENCE]
    assert after.crs == before.crs
    assert after["id"].tolist() == before["id"].tolist()
    assert after["label"].tolist() == before["label"].tolist()
    assert shapely.equals_exact(after.geometry.values, before.geometry.values, tolerance=1e-6).all()


def test_reference_polygons_are_whole_and_cut_by_box_edges(patch: EOPatch) -> None:
    reference = patch[contract.REFERENCE]
    box = patch.bbox.geometry
    assert len(reference) > 20
    assert reference.intersects(box).all()
    assert reference["id"].is_unique
    # polygons are not clipped: some reach beyond the box
    assert (~reference.within(box)).sum() >= 5


# --- 2. determinism and world consistency ------------------------------------------------------------


def test_same_seed_and_bbox_give_identical_patch_whatever_the_threads(
    sim: BoxSimulator, patch: EOPatch
) -> None:
    again = BoxSimulator(box_bbox(0, SIZE), SEED, *FRAMES).eopatch(threads=2)
    assert again.timestamps == patch.timestamps
    for feature in (contract.BANDS, contract.CLP, contract.CLM, contract.SCL, contract.IS_DATA):
        np.testing.assert_array_equal(again[feature], patch[feature], err_msg=feature[1])
    a, b = again[contract.REFERENCE], patch[contract.REFERENCE]
    assert a["id"].tolist() == b["id"].tolist() and a["label"].tolist() == b["label"].tolist()
    assert shapely.equals_exact(a.geometry.values, b.geometry.values, tolerance=0).all()


def test_different_seed_gives_a_different_box() -> None:
    bbox = box_bbox(4, 40)
    one, other = BoxSimulator(bbox, 1, 19, 19), BoxSimulator(bbox, 2, 19, 19)
    assert set(one.polygons["id"]).isdisjoint(other.polygons["id"])
    a, b = one.surface_reflectance(0), other.surface_reflectance(0)
    assert np.mean(np.abs(a - b)) > 0.01
    assert one.dates != other.dates


def test_box_bbox_is_a_stable_grid() -> None:
    assert tuple(box_bbox(0, 100)) == (450000.0, 5080000.0, 451000.0, 5081000.0)
    assert tuple(box_bbox(1, 100)) == (451000.0, 5080000.0, 452000.0, 5081000.0)
    assert tuple(box_bbox(13, 50)) == (451500.0, 5080500.0, 452000.0, 5081000.0)
    assert box_bbox(13, 50).crs.epsg == 32633
    assert box_bbox(7, 120) == box_bbox(7, 120)


def test_adjacent_boxes_agree_on_shared_polygons() -> None:
    left, right = box_bbox(0, 100), box_bbox(1, 100)
    a, b = generate_landscape(SEED, tuple(left)), generate_landscape(SEED, tuple(right))
    shared = a.merge(b, on="id", suffixes=("_a", "_b"))
    assert len(shared) >= 5
    assert (shared["label_a"] == shared["label_b"]).all()
    assert shapely.equals_exact(shared["geometry_a"].values, shared["geometry_b"].values, tolerance=0).all()

    # a polygon straddling the shared edge x = 451000 is in both boxes' REFERENCE
    straddling = a[(a.intersection(left.geometry).area > 1.0) & (a.intersection(right.geometry).area > 1.0)]
    assert len(straddling) >= 1
    refs = [BoxSimulator(bbox, SEED, 1, 1).eopatch()[contract.REFERENCE] for bbox in (left, right)]
    for ref in refs:
        found = ref.set_index("id").loc[straddling["id"]]
        assert found["label"].tolist() == straddling["label"].tolist()
        assert shapely.equals_exact(found.geometry.values, straddling.geometry.values, tolerance=0).all()


# --- 3. landscape statistics ---------------------------------------------------------------------------


def _farmland(world: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return world[~world["label"].isin(NON_FARMLAND)]


def test_landscape_geometries_and_labels_are_valid(world: gpd.GeoDataFrame) -> None:
    assert len(world) > 5000
    assert world.crs.to_epsg() == 32633
    assert world.is_valid.all() and (~world.is_empty).all()
    assert world.geom_type.isin(["Polygon", "MultiPolygon"]).all()
    assert set(world["label"]) <= set(contract.LABEL_NAMES)
    assert world["id"].is_unique


def test_landscape_has_no_overlaps_and_narrow_paths(world: gpd.GeoDataFrame) -> None:
    geoms = world.geometry.values
    union = shapely.union_all(geoms)
    assert abs(world.area.sum() - union.area) <= 1e-6 * union.area
    # distinct polygons are at least a 2.5 m path apart, except contiguous forest blocks
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="dwithin", distance=2.4)
    pairs = left < right
    labels = world["label"].to_numpy()
    assert ((labels[left[pairs]] == 2000) & (labels[right[pairs]] == 2000)).all()
    # ... and the paths are narrow: thousands of neighbours only 2.5 m apart
    left, right = tree.query(geoms, predicate="dwithin", distance=2.6)
    assert (left < right).sum() > 1000


def test_parcel_areas_are_log_normal_and_small(world: gpd.GeoDataFrame) -> None:
    area = _farmland(world).area.to_numpy()
    log_area = np.log(area)
    assert abs(stats.skew(log_area)) < 0.8
    assert abs(stats.kurtosis(log_area)) < 1.5
    assert 0.1e4 <= np.median(area) <= 1.5e4
    assert np.mean(area < 2500.0) >= 0.20  # below 0.25 ha = 400 px at 2.5 m
    assert area.min() >= 25.0


def test_label_shares_of_farmland_parcels(world: gpd.GeoDataFrame) -> None:
    labels = _farmland(world)["label"]
    assert 0.15 <= (labels == 1).mean() <= 0.50
    assert 0.005 <= (labels == 100).mean() <= 0.08
    assert labels.isin(contract.CULTIVATED_CODES).mean() >= 0.2
    for code in (2, 3, 8, 12, 27, 30):  # maize, winter cereals, rapeseed, fallow, vineyard, orchards
        assert (labels == code).sum() >= 10, code
    assert {2000, 3000} <= set(world["label"])


def test_parcels_are_elongated(world: gpd.GeoDataFrame) -> None:
    parcels = _farmland(world)
    rectangles = shapely.minimum_rotated_rectangle(parcels.geometry.values)
    corners = shapely.get_coordinates(rectangles).reshape(len(rectangles), 5, 2)
    sides = np.hypot(*np.moveaxis(np.diff(corners[:, :3], axis=1), -1, 0))
    aspect = sides.max(axis=1) / sides.min(axis=1)
    assert np.median(aspect) > 1.5


def test_cultivated_fraction_of_the_area(world: gpd.GeoDataFrame) -> None:
    box = shapely.box(450000.0, 5080000.0, 460000.0, 5085000.0)
    inside = world.intersection(box).area
    cultivated = inside[world["label"].isin(contract.CULTIVATED_CODES)].sum() / box.area
    assert 0.1 <= cultivated <= 0.6


# --- 4. reference rasterisation ------------------------------------------------------------------------


def _rasterise(patch: EOPatch, shapes: list) -> np.ndarray:
    bbox = patch.bbox
    out = np.zeros((contract.SCALE * SIZE, contract.SCALE * SIZE), dtype=np.uint16)
    if shapes:
        rasterio.features.rasterize(
            shapes, out=out, transform=from_origin(bbox.min_x, bbox.max_y, 2.5, 2.5), all_touched=False
        )
    return out


def test_cultivated_mask_matches_an_independent_rasterisation(patch: EOPatch) -> None:
    reference = patch[contract.REFERENCE]
    cultivated = reference[reference["label"].isin(contract.CULTIVATED_CODES)]
    shrunk = [(geom, 1) for geom in cultivated.geometry.buffer(-2.5) if not geom.is_empty]
    expected = _rasterise(patch, shrunk).astype(bool)
    mask = patch[contract.CULTIVATED][..., 0]
    assert 0.02 < expected.mean() < 0.9  # not vacuous
    np.testing.assert_array_equal(mask, expected)


def test_all_polys_and_not_declared_masks(patch: EOPatch) -> None:
    reference = patch[contract.REFERENCE]
    shrunk = [
        (geom, int(label))
        for geom, label in zip(reference.geometry.buffer(-2.5), reference["label"], strict=True)
        if not geom.is_empty
    ]
    all_polys = patch[contract.ALL_POLYS][..., 0]
    np.testing.assert_array_equal(all_polys, _rasterise(patch, shrunk))
    assert set(np.unique(all_polys)) - {0} <= set(reference["label"])
    assert (all_polys == 0).mean() > 0.02  # paths, roads and the -2.5 m buffer leave gaps
    np.testing.assert_array_equal(patch[contract.NOT_DECLARED][..., 0], all_polys == 100)
    np.testing.assert_array_equal(
        patch[contract.CULTIVATED][..., 0], np.isin(all_polys, list(contract.CULTIVATED_CODES))
    )


# --- 5. sensor physics ---------------------------------------------------------------------------------


def _footprint_weights(n_scene: int, start_m: float, pixel_m: float, sigma_m: float) -> np.ndarray:
    """Weights over scene samples u = (k + 0.5) * 2.5 m: the integral of a Gaussian PSF centred at u over
    the footprint [start, start + pixel), by midpoint sampling of the footprint, normalised."""
    x = start_m + (np.arange(800) + 0.5) * pixel_m / 800
    u = (np.arange(n_scene) + 0.5) * 2.5
    weights = np.exp(-0.5 * ((x[None, :] - u[:, None]) / sigma_m) ** 2).sum(axis=1)
    return weights / weights.sum()


PIXELS = ((0, 0), (SIZE - 1, SIZE - 1), (0, SIZE - 1), (SIZE - 1, 1), (40, 37), (13, 66))


@pytest.mark.parametrize("band", ["B04", "B08", "B11", "B01"])
def test_surface_reflectance_is_the_psf_weighted_area_mean(sim: BoxSimulator, band: str) -> None:
    res = contract.BAND_RESOLUTION_M[band]
    factor = res // 10
    for t in (0, len(sim.dates) // 2):
        abundances = np.stack([sim.abundance(t, e) for e in Endmember])
        reflectance = np.tensordot(ENDMEMBER_SPECTRA[:, B[band]], abundances, axes=1)  # 2.5 m scene
        n_y, n_x = reflectance.shape
        assert (n_y, n_x) == (4 * SIZE + 2 * SCENE_MARGIN_M / 2.5, 4 * SIZE + 2 * SCENE_MARGIN_M / 2.5)
        shift_x, shift_y = sim.misregistration(t)
        surface = sim.surface_reflectance(t)[..., B[band]]
        for row, col in PIXELS:
            # a 10 m pixel takes the native pixel of the coarse grid aligned at the box origin
            native_row, native_col = row // factor, col // factor
            wy = _footprint_weights(n_y, SCENE_MARGIN_M + native_row * res + shift_y, res, PSF_SIGMA_M[res])
            wx = _footprint_weights(n_x, SCENE_MARGIN_M + native_col * res + shift_x, res, PSF_SIGMA_M[res])
            expected = wy @ reflectance @ wx
            assert surface[row, col] == pytest.approx(expected, rel=1e-4), (band, t, row, col)
        if factor > 1:  # nearest resampling: constant over each native pixel
            blocks = surface[: SIZE // factor * factor, : SIZE // factor * factor]
            blocks = blocks.reshape(SIZE // factor, factor, SIZE // factor, factor)
            assert (blocks == blocks[:, :1, :, :1]).all()


def test_psf_blurs_across_parcel_edges(sim: BoxSimulator) -> None:
    """The 10 m image is smoother than a plain 4 x 4 block mean of the 2.5 m scene."""
    t = 0
    nir = np.tensordot(ENDMEMBER_SPECTRA[:, B["B08"]], np.stack([sim.abundance(t, e) for e in Endmember]), 1)
    margin = int(SCENE_MARGIN_M / 2.5)
    box = nir[margin : margin + 4 * SIZE, margin : margin + 4 * SIZE]
    block_mean = box.reshape(SIZE, 4, SIZE, 4).mean(axis=(1, 3))
    surface = sim.surface_reflectance(t)[..., B["B08"]]
    assert np.abs(surface - block_mean).max() > 0.01
    assert np.abs(np.diff(surface, axis=1)).mean() < np.abs(np.diff(block_mean, axis=1)).mean()


def test_misregistration_is_sub_pixel_and_varies(sim: BoxSimulator) -> None:
    shifts = np.array([sim.misregistration(t) for t in range(len(sim.dates))])
    assert np.abs(shifts).max() <= 5.0
    assert shifts.std(axis=0).min() > 1.0
    assert len({tuple(s) for s in shifts.round(3)}) == len(sim.dates)


def test_clear_frame_is_surface_reflectance_plus_sensor_noise(
    sim: BoxSimulator, patch: EOPatch, clear_frame: int
) -> None:
    observed = patch[contract.BANDS][clear_frame].astype(np.float64) * contract.NORM_FACTOR
    surface = sim.surface_reflectance(clear_frame).astype(np.float64)
    gain = (observed * surface).sum() / (surface * surface).sum()
    assert 0.98 <= gain <= 1.02
    residual = (observed - gain * surface).reshape(-1, len(contract.BAND_NAMES))
    np.testing.assert_allclose(residual.std(axis=0), NOISE_SIGMA, rtol=0.1)
    # noise is drawn per native pixel (10, 20 or 60 m), so the mean of a band averages fewer samples
    native = np.array([contract.BAND_RESOLUTION_M[b] // 10 for b in contract.BAND_NAMES])
    n_samples = residual.shape[0] / native**2
    assert (np.abs(residual.mean(axis=0)) < 4 * NOISE_SIGMA / np.sqrt(n_samples) + 2e-4).all()


def test_coarse_bands_keep_their_native_pixels_in_bands(patch: EOPatch, clear_frame: int) -> None:
    bands = patch[contract.BANDS][clear_frame].astype(np.int64)
    for band in ("B05", "B11", "B12", "B01"):
        factor = contract.BAND_RESOLUTION_M[band] // 10
        n = SIZE // factor * factor
        blocks = bands[:n, :n, B[band]].reshape(n // factor, factor, n // factor, factor)
        assert (blocks == blocks[:, :1, :, :1]).mean() > 0.99, band


# --- 6. time series and atmosphere ---------------------------------------------------------------------


def _assert_revisit_pattern(dates: list[dt.datetime]) -> None:
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    assert all(SEASON[0] <= when < SEASON[1] for when in dates)
    # two relative orbits with a 5-day revisit each: one residue of the day number per acquisition time
    residues: dict[dt.time, set[int]] = {}
    for when in dates:
        residues.setdefault(when.time(), set()).add(when.toordinal() % 5)
    assert len(residues) <= 2
    assert all(len(r) == 1 for r in residues.values()), residues
    assert len(set().union(*residues.values())) == len(residues)
    gaps = np.diff([when.toordinal() for when in dates])
    assert gaps.min() >= 1


def test_dates_follow_the_revisit_pattern(patch: EOPatch) -> None:
    _assert_revisit_pattern(list(patch.timestamps))


def test_frame_count_range_is_honoured() -> None:
    counts = []
    for i in range(12):
        dates = acquisition_dates(SEED, box_bbox(i, 100), 19, 48)
        _assert_revisit_pattern(dates)
        counts.append(len(dates))
        assert len(acquisition_dates(SEED, box_bbox(i, 100), 25, 25)) == 25
    assert all(19 <= n <= 48 for n in counts)
    assert len(set(counts)) >= 4  # T varies between boxes
    most = max_frames(SEED)
    assert len(acquisition_dates(SEED, box_bbox(0, 100), most, most)) == most
    assert len(BoxSimulator(box_bbox(3, 10), SEED, 19, 19).dates) == 19


def test_cloud_cover_spans_clear_to_overcast(patch: EOPatch) -> None:
    cover = _temporal(patch, contract.CLM).mean(axis=(1, 2))
    assert cover.min() < 0.05
    assert cover.max() > 0.70
    assert ((cover > 0.05) & (cover < 0.70)).sum() >= 2  # broken clouds too
    assert (cover < 0.05).mean() >= 0.3  # clearer dates are more likely kept


def test_cloud_probability_and_mask_agree(patch: EOPatch) -> None:
    clp, clm = _temporal(patch, contract.CLP), _temporal(patch, contract.CLM)
    assert set(np.unique(clm)) <= {0, 1}
    high = clp >= 200
    assert high.sum() > 1000
    assert clm[high].all()
    # clouds are spatially correlated: CLP is smooth-ish, not salt-and-pepper
    cloudy = clp >= 100
    near_cloud = np.stack([ndimage.binary_dilation(frame, iterations=4) for frame in cloudy])
    clear_far = (clp < 50) & ~near_cloud
    assert clear_far.sum() > 10000
    assert clm[clear_far].mean() < 0.005
    # thresholded then dilated: the mask covers a little more than the high-probability pixels
    assert clm.sum() > (clp >= 102).sum()


def test_scene_classification_is_consistent(patch: EOPatch) -> None:
    scl, clm = _temporal(patch, contract.SCL), _temporal(patch, contract.CLM)
    assert scl.max() <= 11
    assert {4, 5, 8, 9} <= set(np.unique(scl))
    cloud = np.isin(scl, (8, 9))
    assert cloud.sum() > 1000
    assert clm[cloud].mean() > 0.95
    # vegetation (SCL 4) has a high NDVI, "not vegetated" (5) a low one
    bands = patch[contract.BANDS].astype(np.float64)
    ndvi = (bands[..., B["B08"]] - bands[..., B["B04"]]) / np.maximum(
        bands[..., B["B08"]] + bands[..., B["B04"]], 1
    )
    assert np.median(ndvi[scl == 4]) > 0.5
    assert np.median(ndvi[scl == 5]) < 0.4


def test_no_data_pixels_are_empty(patch: EOPatch) -> None:
    is_data = _temporal(patch, contract.IS_DATA)
    bands = patch[contract.BANDS]
    assert (~is_data).any()  # this box has a swath-edge strip on some date
    np.testing.assert_array_equal((bands == 0).all(axis=-1), ~is_data)
    np.testing.assert_array_equal((bands == 0).any(axis=-1), ~is_data)
    for feature in (contract.SCL, contract.CLP, contract.CLM):
        assert (_temporal(patch, feature)[~is_data] == 0).all(), feature[1]
    assert bands.max() <= contract.MAX_DN


def test_no_data_strips_are_occasional_and_partial() -> None:
    partial, frames, empty_frames = 0, 0, 0
    for i in range(10):
        bbox = box_bbox(i, 80)
        grid = scene._Grid(bbox, 80, 80)
        for when in acquisition_dates(SEED, bbox, 19, 48):
            missing = ~scene._no_data(SEED, grid, when)
            frames += 1
            empty_frames += missing.any()
            partial += 0 < missing.mean() < 1
    assert partial >= 1
    assert 0.01 <= empty_frames / frames <= 0.25


# --- 7. phenology --------------------------------------------------------------------------------------

DOY = np.arange(60, 245, dtype=np.float64)


def _ndvi(label: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """NDVI (n, days) of the mixed spectrum of n synthetic parcels with ``label``, and their fractions."""
    ids = np.arange(n) + 1000 * label
    params = ParcelParameters(11, ids, np.array([ARCHETYPE_OF_LABEL[label].value] * n), np.full(n, label))
    fractions = endmember_fractions(params, DOY)
    assert fractions.shape == (n, DOY.size, len(Endmember))
    assert fractions.min() >= 0
    reflectance = fractions @ ENDMEMBER_SPECTRA
    nir, red = reflectance[..., B["B08"]], reflectance[..., B["B04"]]
    return (nir - red) / (nir + red), fractions


def _on(day: int) -> int:
    return int(np.searchsorted(DOY, day))


def test_winter_cereals_are_green_in_spring_and_harvested_in_july() -> None:
    ndvi, _ = _ndvi(3)
    assert ndvi[:, _on(130)].min() > 0.55
    assert ndvi[:, _on(210)].max() < 0.35
    assert np.median(DOY[ndvi.argmax(axis=1)]) < 170


def test_maize_is_bare_until_may_and_peaks_in_august() -> None:
    ndvi, _ = _ndvi(2)
    assert ndvi[:, _on(110)].max() < 0.35
    assert ndvi[:, _on(220)].min() > 0.55
    assert 190 <= np.median(DOY[ndvi.argmax(axis=1)]) <= 244


def test_grassland_stays_green_but_is_mown() -> None:
    ndvi, _ = _ndvi(1)
    assert ndvi.min() > 0.3
    for row in ndvi:
        minima = argrelmin(row, order=5)[0]
        assert len(minima) >= 1
        assert row.max() - row[minima].min() > 0.1  # a real drop, not numerical noise


def test_rapeseed_flowers_in_april_may() -> None:
    _, fractions = _ndvi(8)
    flower = fractions[..., Endmember.FLOWER]
    peak = DOY[flower.argmax(axis=1)]
    assert 110 <= np.median(peak) <= 130
    assert ((peak >= 100) & (peak <= 140)).all()
    assert flower.max(axis=1).min() > 0.2
    assert flower[:, _on(200) :].max() < 0.01


def test_harvest_stubble_appears_only_after_harvest() -> None:
    ndvi, fractions = _ndvi(3)
    dry = fractions[..., Endmember.DRY]
    assert np.median(dry[:, _on(130)]) < 0.1  # green winter cereal in May: no straw yet
    assert np.median(ndvi.max(axis=1)) > 0.75  # 0.77 once the stubble is gated by the harvest
    _, fractions = _ndvi(9)
    assert np.median(fractions[:, _on(75), Endmember.DRY]) < 0.1  # summer cereal in March: bare soil


def test_scene_fractions_follow_the_polygons(sim: BoxSimulator) -> None:
    polygons = sim.polygons
    assert sim.fractions.shape == (len(polygons) + 2, len(sim.dates), len(Endmember))
    transform = sim.grid.scene_transform
    checked = 0
    for i, geom in enumerate(polygons.geometry):
        inner = geom.buffer(-4.0)
        if inner.is_empty or geom.area < 2000:
            continue
        point = inner.representative_point()
        row, col = rowcol(transform, point.x, point.y)
        if 0 <= row < sim.objects.shape[0] and 0 <= col < sim.objects.shape[1]:
            assert sim.objects[row, col] == i + 2
            checked += 1
    assert checked >= 10
    # same phenology as an independent evaluation of the polygons' parameters
    doy = np.array([when.timetuple().tm_yday for when in sim.dates], dtype=np.float64)
    params = ParcelParameters(SEED, polygons["id"], polygons["archetype"], polygons["label"])
    np.testing.assert_array_equal(endmember_fractions(params, doy), sim.fractions[2:])


# --- 8. command line -----------------------------------------------------------------------------------


def _dot_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _out_entries(out: Path) -> list[str]:
    """The entries of a simulated OUT, less the EOExecutor ``logs`` folder it also keeps."""
    return sorted(p.name for p in out.iterdir() if p.name != "logs")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def simulated_region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "region"
    assert cli.main(["simulate", str(out), "--boxes", "2", "--size", "40", "--seed", "3"]) == 0
    return out


def test_simulate_writes_the_challenge_layout(simulated_region: Path, capsys: pytest.CaptureFixture) -> None:
    out = simulated_region
    assert _out_entries(out) == ["eopatches", "parcels.gpkg"]
    assert sorted(p.name for p in (out / "eopatches").iterdir()) == ["box-000", "box-001"]
    assert _dot_entries(out.parent) == []
    parcels = gpd.read_file(out / "parcels.gpkg", layer="parcels")
    assert parcels.crs.to_epsg() == 32633
    assert parcels["id"].is_unique and len(parcels) > 10
    assert set(parcels["label"]) <= set(contract.LABEL_NAMES)
    references = [
        EOPatch.load(str(out / "eopatches" / name), features=[contract.REFERENCE])[contract.REFERENCE]
        for name in ("box-000", "box-001")
    ]
    assert set(parcels["id"]) == set(references[0]["id"]) | set(references[1]["id"])
    # the boxes are adjacent: parcels on the shared edge are in both
    assert set(references[0]["id"]) & set(references[1]["id"])
    for i, name in enumerate(("box-000", "box-001")):
        loaded = EOPatch.load(str(out / "eopatches" / name))
        assert loaded.bbox == box_bbox(i, 40)
        assert loaded[contract.BANDS].shape[1:] == (40, 40, 12)
        assert loaded[contract.CULTIVATED].shape == (160, 160, 1)
        assert 19 <= len(loaded.timestamps) <= 48
    capsys.readouterr()
    paths = [str(out / "eopatches" / name) for name in ("box-000", "box-001")]
    assert cli.main(["validate", *paths]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "validated 2 EOPatches: 2 OK"


def test_simulate_cli_matches_the_simulator(simulated_region: Path) -> None:
    loaded = EOPatch.load(str(simulated_region / "eopatches" / "box-001"))
    direct = RasteriseReferenceTask().execute(BoxSimulator(box_bbox(1, 40), 3).eopatch())
    assert loaded.timestamps == direct.timestamps
    for spec in contract.CONTRACT:
        np.testing.assert_array_equal(loaded[spec.feature], direct[spec.feature], err_msg=spec.path)


BAD_ARGUMENTS = {
    "no boxes": ["--boxes", "0", "--size", "40", "--seed", "3"],
    "tiny size": ["--boxes", "1", "--size", "1", "--seed", "3"],
    "negative seed": ["--boxes", "1", "--size", "40", "--seed", "-1"],
    "min above max": [
        "--boxes",
        "1",
        "--size",
        "40",
        "--seed",
        "3",
        "--frames-min",
        "30",
        "--frames-max",
        "20",
    ],
    "too many frames": ["--boxes", "1", "--size", "40", "--seed", "3", "--frames-max", "100"],
}


@pytest.mark.parametrize("argv", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_simulate_rejects_bad_input(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert cli.main(["simulate", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("s2agri: error: ")
    assert list(tmp_path.iterdir()) == []


def test_simulate_refuses_a_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = _tree(out)
    assert cli.main(["simulate", str(out), "--boxes", "1", "--size", "40", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert _tree(out) == before
    assert _dot_entries(tmp_path) == []


def test_simulate_refuses_a_file_as_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    argv = ["simulate", str(out), "--boxes", "1", "--size", "40", "--seed", "3", "--overwrite"]
    assert cli.main(argv) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert out.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_simulate_overwrite_replaces_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "eopatches").mkdir()
    (out / "eopatches" / "box-007").mkdir()
    argv = ["simulate", str(out), "--boxes", "1", "--size", "40", "--seed", "5", "--frames-max", "19"]
    assert cli.main([*argv, "--overwrite"]) == 0
    assert _out_entries(out) == ["eopatches", "parcels.gpkg"]
    assert sorted(p.name for p in (out / "eopatches").iterdir()) == ["box-000"]
    assert validate_eopatch(out / "eopatches" / "box-000") == []
    assert _dot_entries(tmp_path) == []


def test_simulate_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from s2agri.workflows import simulate

    def broken(self: RasteriseReferenceTask, eopatch: EOPatch) -> EOPatch:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(simulate.RasteriseReferenceTask, "execute", broken)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    argv = ["simulate", str(out), "--boxes", "1", "--size", "40", "--seed", "3", "--frames-max", "19"]
    with pytest.raises(
        RuntimeError,
        match=r"simulation failed: 1 of 1 boxes failed \(box-000: RuntimeError: injected failure\)",
    ):
        cli.main([*argv, "--overwrite"])
    assert _tree(out) == {"keep.txt": b"precious"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

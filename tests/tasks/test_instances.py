"""Field instances: touching fields split by the watershed, traced as one polygon each."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from eolearn.core import EOPatch
from sentinelhub import CRS, BBox

from s2agri.tasks.instances import (
    PRED_INSTANCES,
    InstanceSegmentationTask,
    component_instances,
    h_maxima,
    watershed_instances,
)
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_MODEL_KEY
from s2agri.tasks.vectorise import PARCELS_PRED, VectoriseTask


def two_fields_with_a_neck() -> np.ndarray:
    """Two 30 x 30 px fields joined by a 4 px wide, 6 px long neck (as where a model missed the gap)."""
    mask = np.zeros((40, 80), bool)
    mask[5:35, 5:35] = True
    mask[5:35, 41:71] = True
    mask[18:22, 35:41] = True
    return mask


def test_h_maxima_by_hand() -> None:
    """Peaks 5 and 2 over 0, joined by a saddle of 3: only the 5 stands 2 above its surroundings."""
    image = np.array([[0, 0, 0, 0, 0, 0, 0], [0, 5, 3, 3, 2, 0, 0], [0, 0, 0, 0, 0, 0, 1]], np.float32)
    expected = np.zeros(image.shape, bool)
    expected[1, 1] = True
    np.testing.assert_array_equal(h_maxima(image, 2.0), expected)
    # a plateau maximum is marked whole; the 1 in the corner (h = 1 above 0) joins at h = 1
    image[1, 1:3] = 5
    assert h_maxima(image, 2.0).sum() == 2 and h_maxima(image, 2.0)[1, 1:3].all()
    assert h_maxima(image, 1.0)[2, 6] and h_maxima(image, 1.0).sum() == 3
    assert not h_maxima(image, 6.0).any()  # higher than the image's range
    with pytest.raises(ValueError, match="h > 0"):
        h_maxima(image, 0.0)


def test_h_maxima_matches_skimage_on_smooth_images_with_plateaus() -> None:
    """The linear-time reconstruction marks exactly the pixels of ``skimage.morphology.h_maxima``."""
    from scipy import ndimage
    from skimage.morphology import h_maxima as skimage_h_maxima

    rng = np.random.default_rng(7)
    for _ in range(80):
        shape = tuple(int(n) for n in rng.integers(2, 48, 2))
        image = rng.random(shape).astype(np.float32) * float(rng.choice([1.0, 10.0, 100.0]))
        image = ndimage.gaussian_filter(image, float(rng.choice([0.0, 1.0, 2.0])))
        if rng.random() < 0.4:
            image = np.round(image * 4) / 4  # plateaus and ties
        image = image.astype(np.float32)
        h = float(rng.choice([0.05, 0.5, 2.0]))
        np.testing.assert_array_equal(h_maxima(image, h), skimage_h_maxima(image, h).astype(bool))
    mask = two_fields_with_a_neck()
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask).astype(np.float32), 1.5)
    ours = h_maxima(distance[:, ::-1], 2.0)  # a non-contiguous view
    np.testing.assert_array_equal(ours, skimage_h_maxima(distance[:, ::-1], 2.0).astype(bool))
    assert ours.any()


def test_watershed_splits_touching_fields_components_do_not() -> None:
    mask = two_fields_with_a_neck()
    assert component_instances(mask).max() == 1
    labels = watershed_instances(mask)
    assert labels.max() == 2 and labels.dtype == np.int32
    assert ((labels > 0) == mask).all()  # every mask pixel belongs to a field, nothing else does
    left, right = labels[20, 20], labels[20, 55]
    assert left != right and (labels[5:35, 5:35] == left).all() and (labels[5:35, 41:71] == right).all()


def test_a_compact_field_stays_one_and_empty_masks_work() -> None:
    mask = np.zeros((50, 50), bool)
    mask[10:40, 5:45] = True
    assert watershed_instances(mask).max() == 1
    assert watershed_instances(np.zeros((8, 8), bool)).max() == 0
    tiny = np.zeros((8, 8), bool)
    tiny[3, 3] = True  # no h-maximum deep enough: the pixel keeps its own instance
    assert watershed_instances(tiny).max() == 1
    with pytest.raises(ValueError, match="h_px"):
        watershed_instances(mask, h_px=0)


def test_vectorise_traces_one_polygon_per_instance() -> None:
    mask = two_fields_with_a_neck()
    patch = EOPatch(bbox=BBox((500000, 5000000, 500000 + 80 * 2.5, 5000000 + 40 * 2.5), CRS.UTM_33N))
    patch[PRED_CULTIVATED] = mask[..., None]
    patch.meta_info[PRED_MODEL_KEY] = "test"
    plain = VectoriseTask(proba_feature=None, box_id="b", simplify_tolerance_m=None).execute(patch)
    assert len(plain[PARCELS_PRED]) == 1
    InstanceSegmentationTask().execute(patch)
    assert patch[PRED_INSTANCES].shape == (40, 80, 1) and patch[PRED_INSTANCES].max() == 2
    parcels = VectoriseTask(proba_feature=None, box_id="b", simplify_tolerance_m=None).execute(patch)[
        PARCELS_PRED
    ]
    assert len(parcels) == 2 and shapely.is_valid(parcels.geometry.values).all()
    assert parcels.area.sum() == pytest.approx(mask.sum() * 6.25)
    assert shapely.intersection(*parcels.geometry.values).area == 0  # they share an edge, no area
    with pytest.raises(ValueError, match="method"):
        InstanceSegmentationTask(method="blobs")

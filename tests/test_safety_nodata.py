"""Safety: unobserved pixels are nodata.

Issue 18's class of fault 4: LightGBM mapped pixels without a valid observation as cultivated (an all-cloud box: 100 %, exit 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from eolearn.core import EOPatch
from test_workflows import SIZE, _copy_box, config_file, model, region  # noqa: F401 (fixtures)

from s2agri.tasks import contract
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_OBSERVED
from s2agri.workflows import cli


@pytest.mark.parametrize("model_name", ["lightgbm", "ndvi-rule"])
def test_unobserved_pixels_are_nodata_for_every_model(
    region: Path, model: Path, tmp_path: Path, capsys, model_name: str
) -> None:
    """Pixels that no frame saw clearly are not mapped (the default model once called a cloudy box 100 %
    cultivated): not cultivated, nodata in the probability COG, no parcel; a box never seen fails."""
    src = region / "eopatches"
    half = SIZE // 2

    def west_always_cloudy(patch: EOPatch) -> None:
        clm = patch[contract.CLM].copy()
        clm[:, :, :half] = 1
        patch[contract.CLM] = clm

    def always_cloudy(patch: EOPatch) -> None:
        patch[contract.CLM] = np.ones_like(patch[contract.CLM])

    boxes = tmp_path / "boxes"
    _copy_box(src / "box-003", boxes / "box-west", west_always_cloudy)
    _copy_box(src / "box-002", boxes / "box-cloud", always_cloudy)
    out = tmp_path / "run"
    spec = str(model) if model_name == "lightgbm" else model_name
    assert cli.main(["predict", str(boxes), "--model", spec, "--out", str(out)]) == 1
    failed = json.loads((out / "failed.json").read_text())
    assert (
        list(failed) == ["box-cloud"] and "no pixel of the box has 1 valid observation" in failed["box-cloud"]
    )
    assert "1 of 2 boxes failed" in capsys.readouterr().err
    patch = EOPatch.load(str(out / "eopatches" / "box-west"))
    observed = patch[PRED_OBSERVED][..., 0]
    assert not observed[:, : 4 * half].any() and observed[:, 4 * half :].all()
    assert not patch[PRED_CULTIVATED][:, : 4 * half].any() and patch.meta_info["observed_fraction"] == 0.5
    with rasterio.open(out / "proba" / "box-west_proba.tif") as cog:
        data = cog.read(1)
        assert cog.nodata == 255 and (data[:, : 4 * half] == 255).all() and (data[:, 4 * half :] < 255).all()
    west = shapely.box(patch.bbox.min_x, patch.bbox.min_y, patch.bbox.min_x + half * 10, patch.bbox.max_y)
    parcels = gpd.read_file(out / "parcels.gpkg", layer="parcels")
    assert len(parcels) and parcels.intersection(west).area.max() < 1e-6

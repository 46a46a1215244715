"""Reference masks from parcel polygons, rasterised exactly as the challenge did."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
from eolearn.core import EOPatch, EOTask, FeatureType
from eolearn.geometry import VectorToRasterTask

from . import contract

LABEL_COLUMN = "label"
_CLASS_COLUMN = "_s2agri_class"
_CLASS_CODES = {"cultivated": 1, "not_declared": 2}


def _with_class_column(parcels: gpd.GeoDataFrame, label_column: str) -> gpd.GeoDataFrame:
    if label_column not in parcels.columns:
        raise ValueError(f"parcels have no '{label_column}' column: give the column holding the label codes")
    codes = parcels[label_column].astype("int64")
    unknown = sorted(set(codes.unique()) - set(contract.LABEL_NAMES))
    if unknown:
        raise ValueError(
            f"unknown label codes {unknown[:10]}: use the challenge codes of s2agri.tasks.contract"
        )
    out = parcels[[label_column, "geometry"]].copy()
    out[_CLASS_COLUMN] = np.select(
        [codes.isin(contract.CULTIVATED_CODES), codes.isin(contract.NOT_DECLARED_CODES)],
        [_CLASS_CODES["cultivated"], _CLASS_CODES["not_declared"]],
        default=0,
    )
    return out


class RasteriseReferenceTask(EOTask):
    """Rasterise parcel polygons into CULTIVATED, NOT_DECLARED and ALL_POLYS at 2.5 m.

    Uses eo-learn's ``VectorToRasterTask`` with the challenge settings: ``buffer=-2.5`` m,
    ``all_touched=False``, a raster ``scale`` times the input size. Polygons come from a vector
    feature of the EOPatch (default ``vector_timeless/REFERENCE``) or from a GeoDataFrame.
    """

    def __init__(
        self,
        parcels: gpd.GeoDataFrame | tuple[FeatureType, str] = contract.REFERENCE,
        *,
        label_column: str = LABEL_COLUMN,
        reference_feature: tuple[FeatureType, str] = contract.BANDS,
        scale: int = contract.SCALE,
        buffer: float = contract.REFERENCE_BUFFER_M,
    ):
        self.parcels = parcels
        self.label_column = label_column
        self.reference_feature = reference_feature
        self.scale = scale
        self.buffer = buffer

    def execute(self, eopatch: EOPatch) -> EOPatch:
        if eopatch.bbox is None:
            raise ValueError("the EOPatch has no bbox: reference masks need its extent and CRS")
        parcels = self.parcels if isinstance(self.parcels, gpd.GeoDataFrame) else eopatch[self.parcels]
        if parcels.crs is None:
            raise ValueError("parcels have no CRS: set one (e.g. EPSG:32633) before rasterising")
        parcels = _with_class_column(parcels, self.label_column)
        height, width = eopatch[self.reference_feature].shape[-3:-1]
        shape = (height * self.scale, width * self.scale)
        common = {"raster_shape": shape, "buffer": self.buffer, "all_touched": contract.REFERENCE_ALL_TOUCHED}
        tasks = [
            VectorToRasterTask(
                parcels,
                contract.CULTIVATED,
                values_column=_CLASS_COLUMN,
                values=[_CLASS_CODES["cultivated"]],
                raster_dtype=bool,
                **common,
            ),
            VectorToRasterTask(
                parcels,
                contract.NOT_DECLARED,
                values_column=_CLASS_COLUMN,
                values=[_CLASS_CODES["not_declared"]],
                raster_dtype=bool,
                **common,
            ),
            VectorToRasterTask(
                parcels, contract.ALL_POLYS, values_column=self.label_column, raster_dtype=np.uint16, **common
            ),
        ]
        for task in tasks:
            eopatch = task.execute(eopatch)
        for feature in (contract.CULTIVATED, contract.NOT_DECLARED):
            eopatch[feature] = eopatch[feature].astype(bool)
        return eopatch

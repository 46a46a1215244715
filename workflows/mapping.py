"""The per-box EOWorkflows of cultivated-land mapping, built from a :class:`MappingConfig`.

Prediction, one EOWorkflow per box (eo-learn tasks, each usable alone)::

    LoadTask -> BoxNameTask -> ReflectanceTask -> ValidMaskTask -> [ValidFrameFilterTask]
      -> SeasonalFeaturesTask | NeighbourhoodStatisticsTask -> PixelModelPredictTask | NdviRuleTask
      -> ObservedMaskTask (nodata where a pixel has no valid observation)
      -> InstanceSegmentationTask (touching fields split) -> VectoriseTask
      -> SelectFeaturesTask -> SaveTask (to eopatches/.<box>.partial) -> SubmissionTiffTask
      -> ProbabilityCogTask -> PublishTask (renames the EOPatch to eopatches/<box>)

A parcel classifier (``tempcnn``, ``transformer``, ``lstm-parcel``) replaces the pixel features and the
model task with ZonalStatisticsTask (the box's REFERENCE parcels) -> ParcelClassifierTask ->
PaintParcelPredictionsTask, and its saved EOPatches also keep PARCEL_STATS (with ``proba``).

Training samples, one EOWorkflow per box::

    LoadTask -> ReflectanceTask -> ValidMaskTask -> [ValidFrameFilterTask]
      -> SeasonalFeaturesTask | NeighbourhoodStatisticsTask -> SamplePixelsTask (writes <box>.npz)

The rule needs no pixel features, so its workflow skips them. Saved prediction EOPatches hold only
the products (PRED_PROBA, PRED_CULTIVATED, PARCELS_PRED), the reference masks when the input had
them (so the run can be scored on its own) and ``meta_info`` (model, threshold, box id, input path).
"""

from __future__ import annotations

import logging
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from eolearn.core import (
    EOPatch,
    EOTask,
    EOWorkflow,
    LoadTask,
    SaveTask,
    linearly_connect_tasks,
)
from eolearn.core.types import Feature

from s2agri.models.baselines import LightGBMPixelClassifier
from s2agri.models.sampling import STATS5X5, sample_eopatch
from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.export import ProbabilityCogTask, SubmissionTiffTask
from s2agri.tasks.instances import PRED_INSTANCES, InstanceSegmentationTask
from s2agri.tasks.masks import ReflectanceTask, ValidMaskTask, valid_frame_filter
from s2agri.tasks.predict_deep import DeepModelPredictTask
from s2agri.tasks.predict_parcel import PaintParcelPredictionsTask, ParcelClassifierTask
from s2agri.tasks.predict_pixel import PixelModelPredictTask
from s2agri.tasks.prediction import (
    BOX_ID_KEY,
    INPUT_KEY,
    INPUT_RELATIVE_KEY,
    PRED_BOUNDARY,
    PRED_CULTIVATED,
    PRED_DISTANCE,
    PRED_OBSERVED,
    PRED_PROBA,
    NdviRuleTask,
    ObservedMaskTask,
)
from s2agri.tasks.seasonal import SEASONAL, SeasonalFeaturesTask
from s2agri.tasks.stats5x5 import NeighbourhoodStatisticsTask
from s2agri.tasks.vectorise import PARCELS_PRED, VectoriseTask
from s2agri.tasks.weights import weight_map
from s2agri.tasks.zonal import PARCEL_STATS, ZonalStatisticsTask
from s2agri.workflows.config import MappingConfig, pixel_training
from s2agri.workflows.families import family_of
from s2agri.workflows.model_store import TrainedModel, with_model_inputs

LOGGER = logging.getLogger(__name__)

#: Sub-folders of a prediction run.
SUBMISSION, PROBA, SAMPLES = "submission", "proba", "samples"
#: Features a prediction EOPatch keeps (the reference masks only when present).
SAVED_FEATURES: tuple[Feature, ...] = (
    PRED_PROBA,
    PRED_CULTIVATED,
    PRED_BOUNDARY,
    PRED_DISTANCE,
    PRED_OBSERVED,
    PRED_INSTANCES,
    PARCELS_PRED,
    contract.CULTIVATED,
    contract.NOT_DECLARED,
)


def required_inputs(
    config: MappingConfig, *, reference: bool = False, parcels: bool = False
) -> list[Feature]:
    """Features every input box must have for the workflows of ``config``: ``reference`` for training
    (plus the REFERENCE parcels for a parcel model), ``parcels`` (REFERENCE) to predict with a parcel model."""
    features = [contract.BANDS, contract.NORM_FACTORS, contract.IS_DATA, contract.CLM]
    if config.masks.clp_threshold is not None:
        features.append(contract.CLP)
    if config.masks.scl_invalid_classes is not None:
        features.append(contract.SCL)
    if reference:
        features.append(contract.CULTIVATED)
    if parcels or (reference and family_of(config.train.model).known_parcels):
        features.append(contract.REFERENCE)
    return features


def box_seed_id(box: str) -> int:
    """A stable non-negative int32 id of a box name (seeds its sample draw whatever the box order)."""
    return zlib.crc32(box.encode()) & 0x7FFFFFFF


class BoxNameTask(EOTask):
    """Records the box name (``execute(eopatch, box=...)``) in ``meta_info["box_id"]``, and where the
    input EOPatch is: its absolute path and its path relative to the run folder."""

    def execute(
        self, eopatch: EOPatch, *, box: str, source: str | None = None, relative_source: str | None = None
    ) -> EOPatch:
        eopatch.meta_info[BOX_ID_KEY] = box
        if source is not None:
            eopatch.meta_info[INPUT_KEY] = source
        if relative_source is not None:
            eopatch.meta_info[INPUT_RELATIVE_KEY] = relative_source
        return eopatch


def partial_name(box: str) -> str:
    """Folder name an EOPatch is saved under until the box's workflow has finished."""
    return f".{box}.partial"


class PublishTask(EOTask):
    """Renames the saved ``<folder>/.<box>.partial`` to ``<folder>/<box>`` as the workflow's last step.

    A box folder therefore exists only when every output of the box was written: a run killed at
    any moment leaves at most a ``.partial`` folder, which is never taken for a finished box.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    def execute(self, eopatch: EOPatch, *, box: str) -> EOPatch:
        final = self.folder / box
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.folder / partial_name(box), final)
        return eopatch


class SelectFeaturesTask(EOTask):
    """A new EOPatch with the bbox, ``meta_info`` and those of ``features`` the input has."""

    def __init__(self, features: Sequence[Feature]):
        self.features = [self.parse_feature(feature) for feature in features]

    def execute(self, eopatch: EOPatch) -> EOPatch:
        out = EOPatch(bbox=eopatch.bbox)
        for feature in self.features:
            if feature in eopatch:
                out[feature] = eopatch[feature]
        out.meta_info.update(eopatch.meta_info)
        return out


def class_population(eopatch: EOPatch, *, weights: bool) -> np.ndarray:
    """``[not cultivated, cultivated]`` 2.5 m pixels a box's samples are drawn from (declared, and of
    weight > 0 when sampling with the weight map): a sample of class c stands for population[c] / n_c
    pixels, which turns balanced samples back into the box's class shares when scoring them."""
    truth = np.asarray(eopatch[contract.CULTIVATED])[..., 0].astype(bool)
    eligible = np.ones_like(truth)
    if contract.NOT_DECLARED in eopatch:
        eligible &= ~np.asarray(eopatch[contract.NOT_DECLARED])[..., 0].astype(bool)
    if weights:
        eligible &= weight_map(truth, ~eligible) > 0
    return np.array([np.count_nonzero(eligible & ~truth), np.count_nonzero(eligible & truth)], np.int64)


class SamplePixelsTask(EOTask):
    """Training pixels of a box (:func:`s2agri.models.sampling.sample_eopatch`) saved as ``<box>.npz``.

    The draw is seeded by ``seed`` and the box name, so it does not depend on the order of boxes.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        samples_per_box: int,
        balanced: bool = True,
        weights: bool = False,
        seed: int = 0,
        features_feature: Feature = STATS5X5,
    ):
        self.folder = Path(folder)
        self.samples_per_box = samples_per_box
        self.strategy = "balanced" if balanced else "proportional"
        self.weights = weights
        self.seed = seed
        self.features_feature = features_feature

    def execute(self, eopatch: EOPatch, *, box: str) -> EOPatch:
        samples = sample_eopatch(
            eopatch,
            self.features_feature,
            n_per_box=self.samples_per_box,
            strategy=self.strategy,
            weights=self.weights,
            seed=self.seed,
            box_id=box_seed_id(box),
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{box}.tmp-{os.getpid()}.npz"
        np.savez(
            tmp,
            X=samples.X,
            y=samples.y,
            weight=samples.weight,
            box=samples.box,
            row=samples.row,
            col=samples.col,
            feature_names=np.asarray(samples.feature_names or (), dtype=str),
            population=class_population(eopatch, weights=self.weights),
        )
        tmp.replace(self.folder / f"{box}.npz")
        LOGGER.debug("%s: %s samples (not cultivated, cultivated)", box, samples.class_counts().tolist())
        return eopatch


def feature_tasks(config: MappingConfig, *, statistics: bool = True) -> list[EOTask]:
    """Reflectance, validity, frame filter (when ``min_valid_fraction`` > 0) and the pixel models'
    features (``statistics``: seasonal or 5x5 statistics, :func:`pixel_features_task`)."""
    tasks: list[EOTask] = [
        ReflectanceTask(),
        ValidMaskTask(
            clp_threshold=config.masks.clp_threshold,
            scl_invalid_classes=config.masks.scl_invalid_classes,
        ),
    ]
    if config.masks.min_valid_fraction > 0:
        tasks.append(valid_frame_filter(config.masks.min_valid_fraction))
    if statistics:
        tasks.append(pixel_features_task(config))
    return tasks


def pixel_features_feature(config: MappingConfig) -> Feature:
    """The timeless feature the pixel models read: ``SEASONAL`` or ``STATS5X5`` (``features.kind``)."""
    return SEASONAL if config.features.kind == "seasonal" else STATS5X5


def pixel_features_task(config: MappingConfig) -> EOTask:
    """The task computing the pixel models' features of ``config.features``."""
    features = config.features
    if features.kind == "seasonal":
        return SeasonalFeaturesTask(
            n_windows=features.n_windows,
            season=features.season,
            indices=features.indices,
            percentiles=features.percentiles,
            neighbourhood=features.neighbourhood,
        )
    return NeighbourhoodStatisticsTask(mode=features.mode, window=features.window)


def parcel_tasks(
    model: Any,
    scaler: Any,
    *,
    model_name: str,
    steps: str,
    months: Sequence[int],
    buffer_m: float,
    threshold: float,
    num_threads: int | None = None,
) -> list[EOTask]:
    """Zonal statistics of the box's REFERENCE parcels -> parcel classifier -> painting at 2.5 m."""
    return [
        ZonalStatisticsTask(parcels=contract.REFERENCE, buffer=buffer_m),
        ParcelClassifierTask(model, scaler, steps, months, model_name=model_name, num_threads=num_threads),
        PaintParcelPredictionsTask(threshold=threshold, model_name=model_name),
    ]


def parcel_prediction_tasks(trained: TrainedModel, config: MappingConfig) -> list[EOTask]:
    """Prediction nodes of a parcel classifier: zonal statistics, classifier, painting."""
    info = trained.parcel or {}
    return parcel_tasks(
        trained.model,
        info["scaler"],
        model_name=trained.name,
        steps=info["steps"],
        months=info["months"],
        buffer_m=info["buffer_m"],
        threshold=config.predict.cutoff,
        num_threads=config.deep.trainer.num_threads,
    )


def rule_prediction_tasks(trained: TrainedModel, config: MappingConfig) -> list[EOTask]:
    """Prediction node of the NDVI rule."""
    return [NdviRuleTask()]


def deep_prediction_tasks(trained: TrainedModel, config: MappingConfig) -> list[EOTask]:
    """Prediction node of a torch segmenter (tiled 2.5 m inference)."""
    return [
        DeepModelPredictTask(
            cast(Any, trained.model),
            cast(Any, trained.normaliser),
            trained.n_frames,
            config.predict.cutoff,
            model_name=trained.name,
            tile=config.deep.tile,
            num_threads=config.deep.trainer.num_threads,
            months=trained.months,
            tta=config.predict.tta,
        )
    ]


def pixel_prediction_tasks(trained: TrainedModel, config: MappingConfig) -> list[EOTask]:
    """Prediction node of a pixel classifier on the pixel features (trees compiled when configured)."""
    if config.predict.compiled_trees != "off" and isinstance(trained.model, LightGBMPixelClassifier):
        try:
            trained.model.compile_trees(required=config.predict.compiled_trees == "on")
        except RuntimeError as exc:
            raise S2AgriInputError(f"predict.compiled_trees: on, but {exc}: install it or set 'off'") from exc
    return [
        PixelModelPredictTask(
            trained.model,
            pixel_features_feature(config),
            mode=config.predict.mode,
            threshold=config.predict.cutoff,
            model_name=trained.name,
            refine_margin=config.predict.refine_margin,
        )
    ]


def prediction_tasks(trained: TrainedModel, config: MappingConfig) -> list[EOTask]:
    """The tasks writing PRED_PROBA / PRED_CULTIVATED with ``trained`` (after :func:`feature_tasks`):
    those of its family (:mod:`s2agri.workflows.families`)."""
    return trained.family.prediction_tasks(trained, config)


def prediction_task(trained: TrainedModel, config: MappingConfig) -> EOTask:
    """The one task writing PRED_PROBA / PRED_CULTIVATED with a pixel, deep or rule model ``trained``."""
    tasks = prediction_tasks(trained, config)
    if len(tasks) != 1:
        raise ValueError(f"{trained.name} predicts in {len(tasks)} steps: use prediction_tasks")
    return tasks[0]


def _node_kwargs(workflow: EOWorkflow, per_task: dict[type, dict[str, Any]]) -> dict:
    """Execution kwargs keyed by the workflow's nodes, for the tasks of the given types."""
    return {
        node: kwargs
        for node in workflow.get_nodes()
        for task_type, kwargs in per_task.items()
        if type(node.task) is task_type
    }


class PredictionWorkflow:
    """The prediction EOWorkflow of ``config`` with ``trained``, writing into ``run`` (a folder)."""

    def __init__(self, trained: TrainedModel, config: MappingConfig, input_root: Path, run: Path):
        self.run = Path(run)
        config = with_model_inputs(trained, config)
        family = trained.family
        saved = (*SAVED_FEATURES, PARCEL_STATS) if family.known_parcels else SAVED_FEATURES
        tasks = [
            LoadTask(str(input_root)),
            BoxNameTask(),
            *feature_tasks(config, statistics=family.pixel_features),
            *prediction_tasks(trained, config),
            ObservedMaskTask(min_observations=config.predict.min_observations),
            InstanceSegmentationTask(
                # a parcel model paints the known parcels: its components are the parcels
                method="components" if family.known_parcels else config.vectorise.instances,
                smoothing_px=config.vectorise.smoothing_px,
                h_px=config.vectorise.h_px,
                surface_h=config.vectorise.surface_h,
            ),
            VectoriseTask(
                min_area_m2=config.vectorise.min_area_m2,
                simplify_tolerance_m=config.vectorise.simplify_tolerance_m,
            ),
            SelectFeaturesTask(saved),
            SaveTask(str(self.run / "eopatches")),
            SubmissionTiffTask(self.run / SUBMISSION),
        ]
        if config.export.probability_cog:
            tasks.append(ProbabilityCogTask(self.run / PROBA, dtype=config.export.proba_dtype))
        tasks.append(PublishTask(self.run / "eopatches"))
        self.workflow = EOWorkflow(linearly_connect_tasks(*tasks))

    def execution_kwargs(self, folders: Sequence[str], boxes: Sequence[Path]) -> list[dict]:
        """One kwargs dict per box: ``folders`` relative to the input root, ``boxes`` their paths."""
        kwargs = []
        for folder, box in zip(folders, boxes, strict=True):
            kwargs.append(
                {
                    **_node_kwargs(self.workflow, {LoadTask: {"eopatch_folder": folder}}),
                    **_node_kwargs(
                        self.workflow,
                        {
                            BoxNameTask: {
                                "box": box.name,
                                "source": str(box.resolve()),
                                "relative_source": os.path.relpath(box.resolve(), self.run.resolve()),
                            },
                            SaveTask: {"eopatch_folder": partial_name(box.name)},
                            PublishTask: {"box": box.name},
                        },
                    ),
                }
            )
        return kwargs

    def outputs_of(self, box: str) -> list[Path]:
        """Every path the workflow writes for ``box`` (to remove them when the box failed)."""
        return [
            self.run / "eopatches" / box,
            self.run / "eopatches" / partial_name(box),
            self.run / SUBMISSION / f"{box}.tif",
            self.run / PROBA / f"{box}_proba.tif",
        ]


class SamplingWorkflow:
    """The training-sample EOWorkflow of ``config``: one ``<box>.npz`` per box in ``folder``."""

    def __init__(self, config: MappingConfig, input_root: Path, folder: Path):
        train = pixel_training(config)
        tasks = [
            LoadTask(str(input_root)),
            *feature_tasks(config),
            SamplePixelsTask(
                folder,
                samples_per_box=train.samples_per_box,
                balanced=train.balanced,
                weights=train.sample_weights,
                seed=train.seed,
                features_feature=pixel_features_feature(config),
            ),
        ]
        self.workflow = EOWorkflow(linearly_connect_tasks(*tasks))

    def execution_kwargs(self, folders: Sequence[str], boxes: Sequence[Path]) -> list[dict]:
        return [
            {
                **_node_kwargs(self.workflow, {LoadTask: {"eopatch_folder": folder}}),
                **_node_kwargs(self.workflow, {SamplePixelsTask: {"box": box.name}}),
            }
            for folder, box in zip(folders, boxes, strict=True)
        ]

"""``s2agri run CONFIG``: map a whole region: AOI -> grid -> data -> predict -> merge -> export.

One validated config (:class:`RegionConfig`) holds every parameter. The output folder::

    region.json            the resolved config the folder was made with (refuses to mix configs)
    grid.gpkg              the box grid of the AOI (layer ``grid``)
    data/<box>/            input EOPatches (simulated, with reference)
    predict/eopatches/<box>/, predict/submission/, predict/proba/, predict/report/<stage>/
    parcels.<ext>          seamless parcels of the region (one per ``export.formats``)
    mosaic/                VRTs and COG mosaics of the predicted masks and probabilities
    failed.json            boxes that failed, with the stage and the one-line reason
    summary.json           counts and seconds of the last run
    stac/collection.json   STAC collection of the boxes and region files (s2agri.workflows.stac_outputs)

Every stage is idempotent: a box is done when its published folder exists (EOPatches are saved
under a ``.partial`` name and renamed as their workflow's last step), so ``--resume`` after a crash
(even ``kill -9``) redoes only unfinished boxes and gives the same outputs as an uninterrupted run.
Region-wide files are rewritten atomically from all done boxes at the end of every run. Failed
boxes never stop the others; ``--resume`` leaves them out until ``--retry-failed``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import shapely
from eolearn.core import EOPatch, EOWorkflow, FeatureType, SaveTask, linearly_connect_tasks
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from s2agri.aoi import demo_aoi_path
from s2agri.aoi.grid import box_bbox, check_aoi, read_aoi, split_aoi, write_grid
from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.instances import PRED_INSTANCES
from s2agri.tasks.merge import merge_parcels, trace_eopatch
from s2agri.tasks.prediction import PRED_CULTIVATED, PRED_PROBA
from s2agri.tasks.vector_export import write_vector
from s2agri.workflows.aoi_clip import MASK_NODATA, aoi_area, clip_parcels, clip_raster
from s2agri.workflows.config import MappingConfig, read_config_mapping, validation_problems
from s2agri.workflows.fetch import box_tasks
from s2agri.workflows.mapping import PredictionWorkflow, PublishTask, partial_name
from s2agri.workflows.model_store import MODEL_CARD, UNTRAINED_MODELS, load_trained
from s2agri.workflows.runs import ExecutionSummary, execute, write_json
from s2agri.workflows.sources import (
    ParcelsConfig,
    SimulatorSource,
    SourceConfig,
    default_source_kind,
    parcels_kind,
    redact,
    refuse_secret,
    split_postgres_uri,
)
from s2agri.workflows.stac_outputs import region_run_collection
from s2agri.workflows.validate import scan_eopatch

LOGGER = logging.getLogger(__name__)

REGION_FILE, FAILED_FILE, SUMMARY_FILE, GRID_FILE = "region.json", "failed.json", "summary.json", "grid.gpkg"
DATA, PREDICT, MOSAIC = "data", "predict", "mosaic"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridConfig(_Strict):
    size_m: int = Field(5000, ge=100, description="box side in metres (a multiple of 10)")
    buffer_m: int = Field(0, ge=0)
    max_boxes: int = Field(1000, ge=1, description="more boxes need --yes")


class EngineConfig(_Strict):
    kind: Literal["processes", "ray"] = "processes"
    workers: int = Field(1, ge=1)
    ray_address: str | None = Field(None, description="'auto', 'ray://host:port'; None starts a local Ray")


class PostgisExportConfig(_Strict):
    """Upload of the region's parcels to a PostGIS table (password from PGPASSWORD or ~/.pgpass)."""

    uri: str = Field(..., description="postgresql://[user@]host[:port]/db?table=[schema.]name")
    if_exists: Literal["replace", "append"] = Field(
        "replace",
        description="replace: the table holds the region's parcels after every run; append: adds them",
    )

    @field_validator("uri")
    @classmethod
    def _postgres_without_password(cls, uri: str) -> str:
        if parcels_kind(uri) != "postgis":
            raise ValueError(f"{redact(uri)} is not a postgresql:// URI")
        refuse_secret(uri, "put it in PGPASSWORD or ~/.pgpass")
        from s2agri.tasks.postgis_db import check_identifier

        _, schema, table = split_postgres_uri(uri)
        check_identifier(schema, "schema")  # refused now, not after the whole region ran
        check_identifier(table, "table name")
        return uri


class RegionExportConfig(_Strict):
    formats: tuple[Literal["gpkg", "parquet", "fgb", "shp", "geojson"], ...] = ("gpkg",)
    mosaics: bool = True
    clip_to_aoi: bool = Field(
        True,
        description="cut the parcels at the AOI outline and make mosaic pixels outside the AOI nodata "
        "(s2agri.workflows.aoi_clip); false: whole boxes",
    )
    postgis: PostgisExportConfig | None = None


class RegionConfig(_Strict):
    """Everything ``s2agri run`` needs; the engine may change between runs of one output folder."""

    aoi: str = Field("demo", description="AOI vector file, or 'demo' for the AOI shipped with s2agri")
    aoi_layer: str | None = None
    grid: GridConfig = GridConfig()
    source: SourceConfig = SimulatorSource()
    parcels: ParcelsConfig | None = Field(None, description="parcel polygons (the simulator has its own)")
    model: str = Field("ndvi-rule", description="a folder written by 's2agri train', or 'ndvi-rule'")
    mapping: MappingConfig = MappingConfig()
    export: RegionExportConfig = RegionExportConfig()
    engine: EngineConfig = EngineConfig()

    _default_source_kind = field_validator("source", mode="before")(default_source_kind)

    def identity(self) -> dict:
        """The parts that determine the outputs: everything but the engine, with the AOI and the model
        given by the digests of their files (so the same files under other paths match)."""
        data = self.model_dump(mode="json", exclude={"engine"})
        data["aoi"] = _digest(demo_aoi_path() if self.aoi == "demo" else Path(self.aoi))
        if self.model not in UNTRAINED_MODELS:
            data["model"] = _digest(Path(self.model) / MODEL_CARD)
        return data


def _digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes; an input error when it is missing."""
    if not path.is_file():
        raise S2AgriInputError(f"{path} does not exist: check the aoi / model paths of the config")
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def load_region_config(path: str | Path) -> RegionConfig:
    """Read and validate a region config file (YAML/JSON); relative paths are taken from its folder."""
    path = Path(path)
    data = read_config_mapping(path)
    for key in ("aoi", "model"):
        value = data.get(key)
        if isinstance(value, str) and value not in ("demo", "ndvi-rule") and not Path(value).is_absolute():
            data[key] = str((path.parent / value).resolve())
    try:
        return RegionConfig.model_validate(data)
    except ValidationError as exc:
        raise S2AgriInputError(f"config {path} is invalid: {validation_problems(exc)}") from exc


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def prepare_output(out: Path, config: RegionConfig, resume: bool) -> None:
    """Create ``out`` with its region.json, or check that an existing one was made with ``config``."""
    record = out / REGION_FILE
    identity = config.identity()  # reads the AOI and the model card: a missing one fails before any write
    if out.exists() and any(out.iterdir()):
        if not record.is_file():
            raise S2AgriInputError(f"{out} exists and is not an s2agri region folder: choose another --out")
        if not resume:
            raise S2AgriInputError(
                f"{out} holds an earlier run: add --resume to continue it or choose another --out"
            )
        old = json.loads(record.read_text())
        changed = _differences(old, identity)
        if changed:
            raise S2AgriInputError(
                f"{out} was made with another config ({', '.join(changed[:5])} differ): "
                "use the same config to resume, or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, identity)


def _failed(out: Path) -> dict[str, dict]:
    path = out / FAILED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _done(folder: Path, names: list[str]) -> set[str]:
    return {name for name in names if (folder / name).is_dir()}


def _clean_partials(folder: Path) -> None:
    """Remove what a killed run left: ``.<box>.partial`` EOPatches and eo-learn's temporary folders."""
    for partial in [*folder.glob(".*.partial"), *folder.glob("tmp*__tempfs__")]:
        shutil.rmtree(partial, ignore_errors=True)


def data_workflow(config: RegionConfig, data: Path) -> EOWorkflow:
    """source -> [time filter] -> [parcels -> reference masks] -> save (partial) -> publish."""
    tasks = [*box_tasks(config.source, config.parcels), SaveTask(str(data)), PublishTask(data)]
    return EOWorkflow(linearly_connect_tasks(*tasks))


def _run_stage(
    workflow: EOWorkflow, kwargs: list[dict], names: list[str], logs: Path, engine: EngineConfig
) -> ExecutionSummary:
    if not names:
        return ExecutionSummary([])
    return execute(
        workflow, kwargs, names, logs, engine.workers, engine=engine.kind, ray_address=engine.ray_address
    )


def run_data_stage(config: RegionConfig, out: Path, grid, skip: set[str]) -> ExecutionSummary:
    data = out / DATA
    data.mkdir(exist_ok=True)
    _clean_partials(data)
    names = list(grid["name"])
    pending = [n for n in names if n not in _done(data, names) and n not in skip]
    workflow = data_workflow(config, data)
    nodes = workflow.get_nodes()
    rows = {row.name: row for row in grid.itertuples(index=False)}
    kwargs = [
        {
            nodes[0]: {"bbox": box_bbox(rows[name])},
            nodes[-2]: {"eopatch_folder": partial_name(name)},
            nodes[-1]: {"box": name},
        }
        for name in pending
    ]
    return _run_stage(workflow, kwargs, pending, out / PREDICT / "report" / DATA, config.engine)


def run_predict_stage(config: RegionConfig, out: Path, names: list[str], skip: set[str]) -> ExecutionSummary:
    data, run = out / DATA, out / PREDICT
    for sub in ("eopatches", "submission", "proba"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    _clean_partials(run / "eopatches")
    available = _done(data, names)
    done = _done(run / "eopatches", names)
    pending = [n for n in names if n in available and n not in done and n not in skip]
    trained = load_trained(config.model)
    workflow = PredictionWorkflow(trained, config.mapping, data, run)
    kwargs = workflow.execution_kwargs(pending, [data / name for name in pending])
    summary = _run_stage(workflow.workflow, kwargs, pending, run / "report" / PREDICT, config.engine)
    for name in summary.failures:
        for path in workflow.outputs_of(name):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return summary


def merge_stage(
    config: RegionConfig, out: Path, names: list[str], area: shapely.Geometry | None = None
) -> int:
    """Seamless parcels of every predicted box, cut at ``area`` (the AOI) when given, written in each
    export format; returns the count."""
    folders = [out / PREDICT / "eopatches" / name for name in names]
    folders = [folder for folder in folders if folder.is_dir()]
    frames, boxes = [], []
    for folder in folders:
        features: list[Any] = [PRED_CULTIVATED, PRED_PROBA, FeatureType.META_INFO]
        if PRED_INSTANCES in scan_eopatch(folder).features:
            features.append(PRED_INSTANCES)
        patch = EOPatch.load(str(folder), features=features)
        parcels, box = trace_eopatch(patch)
        frames.append(parcels)
        boxes.append(box)
    if not frames:
        return 0
    merged = merge_parcels(
        frames,
        boxes,
        tolerance=config.mapping.vectorise.simplify_tolerance_m,
        min_area_m2=config.mapping.vectorise.min_area_m2,
    )
    if area is not None:
        merged = clip_parcels(merged, area, min_area_m2=config.mapping.vectorise.min_area_m2)
    for fmt in config.export.formats:
        write_vector(merged, out / f"parcels.{fmt}", layer="parcels")
    if config.export.postgis is not None:
        from s2agri.tasks.postgis_export import upload_parcels

        dsn, schema, table = split_postgres_uri(config.export.postgis.uri)
        rows = upload_parcels(merged, dsn, table, schema=schema, if_exists=config.export.postgis.if_exists)
        LOGGER.info("uploaded %d parcels to %s.%s", rows, schema, table)
    return len(merged)


def mosaic_stage(out: Path, names: list[str], area: shapely.Geometry | None = None) -> list[Path]:
    """VRT and COG mosaics of the submission masks and probability COGs of the predicted boxes; with
    ``area`` (the AOI) from copies clipped to it, in ``mosaic/tiles/<kind>/`` (module aoi_clip)."""
    from s2agri.tasks.mosaic import write_cog_mosaic, write_vrt

    folder = out / MOSAIC
    folder.mkdir(exist_ok=True)
    written = []
    for kind, pattern in (("cultivated", "submission/{}.tif"), ("proba", "proba/{}_proba.tif")):
        boxes = {name: out / PREDICT / pattern.format(name) for name in names}
        boxes = {name: tif for name, tif in boxes.items() if tif.is_file()}
        if not boxes:
            continue
        tifs = list(boxes.values())
        if area is not None:
            # the mask is nodata outside the AOI and where its probability COG is (unobserved)
            mask = kind == "cultivated"
            tifs = [
                clip_raster(
                    tif,
                    folder / "tiles" / kind / tif.name,
                    area,
                    nodata=MASK_NODATA if mask else None,
                    unobserved_from=out / PREDICT / "proba" / f"{name}_proba.tif" if mask else None,
                )
                for name, tif in boxes.items()
            ]
        write_vrt(tifs, folder / f"{kind}.vrt")
        # overviews of a 0/1 mask by majority, of probabilities by averaging
        write_cog_mosaic(
            tifs, folder / f"{kind}.tif", resampling="mode" if kind == "cultivated" else "average"
        )
        written += [folder / f"{kind}.vrt", folder / f"{kind}.tif"]
    return written


def run_region(
    config: RegionConfig, out: Path, *, resume: bool = False, retry_failed: bool = False, yes: bool = False
) -> dict:
    """Run every stage; returns the summary (also written to summary.json)."""
    start = time.perf_counter()
    aoi_path = demo_aoi_path() if config.aoi == "demo" else Path(config.aoi)
    aoi = check_aoi(read_aoi(aoi_path, config.aoi_layer))
    grid = split_aoi(
        aoi, config.grid.size_m, config.grid.buffer_m, max_boxes=config.grid.max_boxes, confirm_large=yes
    )
    if config.model not in UNTRAINED_MODELS:
        load_trained(config.model)  # a model that cannot be read fails before any work
    prepare_output(out, config, resume)
    write_grid(grid, out / GRID_FILE, overwrite=True)
    names = list(grid["name"])
    failed = {} if retry_failed else _failed(out)
    skip = set(failed)
    seconds: dict[str, float] = {}

    stage_start = time.perf_counter()
    data_summary = run_data_stage(config, out, grid, skip)
    seconds[DATA] = time.perf_counter() - stage_start
    failed.update({n: {"stage": DATA, "reason": r} for n, r in data_summary.failures.items()})

    stage_start = time.perf_counter()
    predict_summary = run_predict_stage(config, out, names, set(failed))
    seconds[PREDICT] = time.perf_counter() - stage_start
    failed.update({n: {"stage": PREDICT, "reason": r} for n, r in predict_summary.failures.items()})

    stage_start = time.perf_counter()
    done = sorted(_done(out / PREDICT / "eopatches", names))
    area = aoi_area(aoi, grid.crs) if config.export.clip_to_aoi else None
    parcels = merge_stage(config, out, done, area)
    seconds["merge"] = time.perf_counter() - stage_start
    if config.export.mosaics:
        stage_start = time.perf_counter()
        mosaic_stage(out, done, area)
        seconds["mosaic"] = time.perf_counter() - stage_start

    write_json(out / FAILED_FILE, failed)
    summary = {
        "boxes": len(names),
        "done": len(done),
        "failed": len(failed),
        "ran": {DATA: len(data_summary.names), PREDICT: len(predict_summary.names)},
        "parcels": parcels,
        "engine": config.engine.model_dump(),
        "seconds": {k: round(v, 2) for k, v in seconds.items()}
        | {"total": round(time.perf_counter() - start, 2)},
    }
    write_json(out / SUMMARY_FILE, summary)
    region_run_collection(out, done, [fmt.lstrip(".") for fmt in config.export.formats])
    return summary

"""``s2agri demo``: the whole per-box chain on simulated data, with no account and no download.

Simulates a small region, trains LightGBM on the training boxes, predicts the hold-out boxes with
LightGBM and with the starter-pack NDVI rule, scores both and exports everything::

    DIR/data/                 the simulated boxes (inputs, reference) and their parcels
    DIR/models/lightgbm/      the trained model and its model_card.json
    DIR/eopatches/<box>/      LightGBM predictions: PRED_PROBA, PRED_CULTIVATED, PARCELS_PRED
    DIR/parcels.gpkg          predicted parcels (layer ``parcels``)
    DIR/submission/<box>.tif  challenge submission rasters; DIR/proba/ probability COGs
    DIR/baselines/ndvi-rule/  the same run with the rule
    DIR/metrics.json/.csv     one row per model and box, plus the pooled rows
    DIR/quicklooks/<box>.png  RGB, truth, and the LightGBM map (FP red, FN yellow)

Everything is built in a temporary sibling and renamed to DIR at the end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from s2agri.tasks import contract
from s2agri.workflows.config import MappingConfig
from s2agri.workflows.demo_settings import DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_TEST, DEFAULT_TRAIN
from s2agri.workflows.evaluate import evaluate_boxes, quicklook, summary_rows, write_metrics
from s2agri.workflows.model_store import load_trained
from s2agri.workflows.predict import predict_boxes
from s2agri.workflows.runs import EOPATCHES, staged_folder, write_json
from s2agri.workflows.simulate import box_name, simulate_region
from s2agri.workflows.train import train_model

LOGGER = logging.getLogger(__name__)


def run_demo(
    out: Path,
    *,
    seed: int = DEFAULT_SEED,
    size: int = DEFAULT_SIZE,
    train_boxes: int = DEFAULT_TRAIN,
    test_boxes: int = DEFAULT_TEST,
    config: MappingConfig | None = None,
) -> list[dict]:
    """Run the demo into ``out`` (replaced atomically); returns the metrics rows."""
    config = config or MappingConfig()
    timings: dict[str, float] = {}
    with staged_folder(out) as staging:
        start = time.perf_counter()
        data = staging / "data"
        simulate_region(
            data,
            train_boxes + test_boxes,
            size,
            seed,
            contract.MIN_FRAMES,
            contract.MAX_FRAMES,
            config.workers,
        )
        timings["simulate"] = time.perf_counter() - start
        boxes = [data / EOPATCHES / box_name(i) for i in range(train_boxes + test_boxes)]
        train, test = boxes[:train_boxes], boxes[train_boxes:]

        start = time.perf_counter()
        model_folder = staging / "models" / config.train.model
        train_model(train, config, model_folder, config.workers)
        timings["train"] = time.perf_counter() - start

        start = time.perf_counter()
        rule_run = staging / "baselines" / "ndvi-rule"
        rule_run.mkdir(parents=True)
        predict_boxes(test, load_trained("ndvi-rule"), config, rule_run, config.workers)
        summary = predict_boxes(test, load_trained(model_folder), config, staging, config.workers)
        timings["predict"] = time.perf_counter() - start
        if summary.failures:
            raise RuntimeError(f"demo prediction failed: {summary.failure_line()}")

        rows = evaluate_boxes(sorted((staging / EOPATCHES).iterdir()))
        rows += evaluate_boxes(sorted((rule_run / EOPATCHES).iterdir()))
        write_metrics(rows, staging / "metrics.json", staging / "metrics.csv")
        write_json(staging / "metrics_summary.json", summary_rows(rows))
        (staging / "quicklooks").mkdir()
        for box in sorted((staging / EOPATCHES).iterdir()):
            quicklook(box, staging / "quicklooks" / f"{box.name}.png")
        write_json(
            staging / "demo.json",
            {
                "seed": seed,
                "size": size,
                "train_boxes": [b.name for b in train],
                "test_boxes": [b.name for b in test],
                "seconds": {k: round(v, 1) for k, v in timings.items()},
                "config": config.model_dump(mode="json"),
            },
        )
    return rows

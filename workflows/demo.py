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

import argparse
import json
import logging
import time
from pathlib import Path

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows.config import MappingConfig, load_config
from s2agri.workflows.demo_settings import DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_TEST, DEFAULT_TRAIN
from s2agri.workflows.evaluate import evaluate_boxes, format_table, quicklook, summary_rows, write_metrics
from s2agri.workflows.model_store import load_trained
from s2agri.workflows.predict import PARCELS_FILE, predict_boxes
from s2agri.workflows.runs import EOPATCHES, check_out, staged_folder, write_json
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


def demo_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri demo``."""
    if args.train_boxes < 1 or args.test_boxes < 1:
        raise S2AgriInputError("--train-boxes and --test-boxes must be at least 1")
    if not 64 <= args.size <= 2000:
        raise S2AgriInputError(
            f"--size {args.size} is out of range: give 64 to 2000 pixels (500 = a challenge box)"
        )
    config = load_config(args.config)
    if args.workers is not None:
        config = MappingConfig.model_validate({**config.model_dump(), "workers": args.workers})
    out = check_out(args.out, args.overwrite)
    start = time.perf_counter()
    rows = run_demo(
        out,
        seed=args.seed,
        size=args.size,
        train_boxes=args.train_boxes,
        test_boxes=args.test_boxes,
        config=config,
    )
    print(format_table(rows))
    seconds = json.loads((out / "demo.json").read_text())["seconds"]
    print(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s "
        f"(simulate {seconds['simulate']:.0f} s, train {seconds['train']:.0f} s, predict {seconds['predict']:.0f} s)"
    )
    print(f"  predictions: {out / EOPATCHES}/<box> (PRED_PROBA, PRED_CULTIVATED, PARCELS_PRED)")
    print(f"  parcels:     {out / PARCELS_FILE} (layer 'parcels')")
    print(f"  submission:  {out / 'submission'}/<box>.tif")
    print(f"  metrics:     {out / 'metrics.json'}, {out / 'metrics.csv'}")
    print(f"  quicklooks:  {out / 'quicklooks'}/<box>.png")
    print(f"  model:       {out / 'models' / config.train.model / 'model_card.json'}")
    return 0

"""The ``s2agri demo`` command: arguments in, a workflow of :mod:`s2agri.workflows.demo` called, results printed."""

from __future__ import annotations

import argparse
import json
import time

from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows.config import MappingConfig, load_config
from s2agri.workflows.demo import run_demo
from s2agri.workflows.evaluate import format_table
from s2agri.workflows.predict import PARCELS_FILE
from s2agri.workflows.runs import EOPATCHES, check_out


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

"""The ``s2agri evaluate`` command: arguments in, a workflow of :mod:`s2agri.workflows.evaluate` called, results printed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.export import atomic_write_text
from s2agri.workflows.evaluate import evaluate_boxes, format_table, quicklook, summary_rows, write_metrics


def evaluate_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri evaluate``: score runs, print the table, write metrics (and quicklooks)."""
    from s2agri.workflows.runs import find_boxes

    runs = [Path(run) for run in args.runs]
    if args.out is None and len(runs) > 1:
        raise S2AgriInputError("several runs given: add --out DIR for the metrics files")
    out = Path(args.out) if args.out is not None else runs[0]
    per_run = [evaluate_boxes(find_boxes([run])) for run in runs]
    models = [{row["model"] for row in rows} for rows in per_run]
    shared = {m for i, names in enumerate(models) for m in names if any(m in o for o in models[i + 1 :])}
    rows = []
    for run, run_rows in zip(runs, per_run, strict=True):
        for row in run_rows:  # two runs of one model get told apart by their folder
            if row["model"] in shared:
                row["model"] = f"{row['model']} ({run.name})"
        rows.extend(run_rows)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(rows, out / "metrics.json", out / "metrics.csv")
    atomic_write_text(out / "metrics_summary.json", json.dumps(summary_rows(rows), indent=2) + "\n")
    print(format_table(rows, summary=True))
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and {out / 'metrics_summary.json'}")
    if args.quicklooks:
        folder = out / "quicklooks"
        folder.mkdir(exist_ok=True)
        for box in find_boxes(runs):
            quicklook(box, folder / f"{box.name}.png")
        print(f"wrote quicklooks to {folder}")
    return 0

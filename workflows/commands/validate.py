"""The ``s2agri validate`` command: arguments in, a workflow of :mod:`s2agri.workflows.validate` called, results printed."""

from __future__ import annotations

import argparse
import time

from s2agri.workflows.validate import logger, validate_eopatch


def validate_command(args: argparse.Namespace) -> int:
    """``s2agri validate PATH...``: one line per valid patch or per violation; exit 1 on any violation."""
    n_ok = n_bad = n_violations = 0
    for path in args.paths:
        start = time.perf_counter()
        violations = validate_eopatch(path)
        logger.debug("validated %s in %.3f s", path, time.perf_counter() - start)
        if violations:
            n_bad += 1
            n_violations += len(violations)
            for violation in violations:
                print(f"{path}: {violation}")
        else:
            n_ok += 1
            print(f"OK {path}")
    total = n_ok + n_bad
    summary = f"validated {total} EOPatch{'es' if total != 1 else ''}: {n_ok} OK"
    if n_bad:
        summary += f", {n_bad} with {n_violations} violation{'s' if n_violations != 1 else ''}"
    print(summary)
    return 1 if n_bad else 0

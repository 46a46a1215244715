"""The ``s2agri config show`` command: arguments in, a workflow of :mod:`s2agri.workflows.config_show` called, results printed."""

from __future__ import annotations

import argparse
import json

from pydantic import BaseModel

from s2agri.workflows.config_show import commented_yaml


def config_show_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri config show``: print the resolved config (or its JSON schema)."""
    if args.region:
        from s2agri.workflows.region import RegionConfig, load_region_config

        model: BaseModel = load_region_config(args.config) if args.config else RegionConfig()
    else:
        from s2agri.workflows.config import MappingConfig, load_config

        model = load_config(args.config) if args.config else MappingConfig()
    if args.schema:
        print(json.dumps(type(model).model_json_schema(), indent=2))
        return 0
    kind = "s2agri run" if args.region else "s2agri train/predict"
    source = f"resolved from {args.config}" if args.config else "defaults"
    print(f"# {kind} config ({source}); pass a copy with --config")
    print(commented_yaml(model))
    return 0

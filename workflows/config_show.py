"""``s2agri config show``: a config with every default filled in, each key commented with its meaning.

The output is valid YAML that ``--config`` reads back unchanged (comments are ignored), so it is a
starting point for a run's config file: one file reproduces a run.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

INDENT = "  "


def _scalar(value: Any) -> str:
    """One value as inline YAML (flow style for lists and mappings)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def commented_yaml(model: BaseModel, depth: int = 0) -> str:
    """``model`` as block YAML, every field preceded by ``# <its description>`` where it has one."""
    lines: list[str] = []
    data = model.model_dump(mode="json")
    fields = type(model).model_fields
    for name, value in data.items():
        pad = INDENT * depth
        description = fields[name].description if name in fields else None
        if description:
            lines.append(f"{pad}# {' '.join(description.split())}")
        nested = getattr(model, name)
        if isinstance(nested, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(commented_yaml(nested, depth + 1))
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)

"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from eopatch_factory import build_eopatch


@pytest.fixture
def write_eopatch(tmp_path: Path) -> Callable[..., Path]:
    """Save :func:`build_eopatch` (keyword arguments passed on) under ``tmp_path/<name>``."""

    def write(name: str = "eopatch-0", **kwargs: object) -> Path:
        path = tmp_path / name
        build_eopatch(**kwargs).save(str(path))
        return path

    return write

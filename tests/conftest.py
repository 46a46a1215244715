"""Shared test fixtures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
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


@pytest.fixture(autouse=True)
def _restore_s2agri_log_level() -> Iterator[None]:
    """The CLI configures the 's2agri' logger; put its level back after each test."""
    logger = logging.getLogger("s2agri")
    level = logger.level
    yield
    logger.setLevel(level)

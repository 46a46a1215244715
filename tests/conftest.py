"""Shared test fixtures."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eopatch_factory import build_eopatch


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Compiled trees go to a cache of this test session (also for CLI subprocesses), not ~/.cache."""
    previous = os.environ.get("S2AGRI_CACHE_DIR")
    os.environ["S2AGRI_CACHE_DIR"] = str(tmp_path_factory.mktemp("s2agri-cache"))
    yield
    if previous is None:
        os.environ.pop("S2AGRI_CACHE_DIR", None)
    else:
        os.environ["S2AGRI_CACHE_DIR"] = previous


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

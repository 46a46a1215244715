"""The installed s2agri version (bottom layer: model cards, STAC items and the CLI record it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed s2agri version, or ``"unknown (not installed)"``."""
    try:
        return version("s2agri")
    except PackageNotFoundError:
        return "unknown (not installed)"

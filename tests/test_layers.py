"""Layers only point down: ``tasks``, ``models`` and ``aoi`` never import ``workflows`` (nor the CLI),
and inside them sources, features, models, prediction, vectors, export and aoi import only their own
layer and the layers before it, over a bottom layer (errors, keys, atomic I/O, output contract).

Every import statement is checked, including imports inside functions (``ast``, no execution), so a
lazy import cannot hide a backwards dependency. ``workflows`` sits on top: it builds configs and
EOWorkflows from the layers below and is the only package that may import the command line.
Inside it, the command line (``workflows/cli.py`` and ``workflows/commands/``) is the top: the
workflow modules never import it, never take an ``argparse.Namespace`` and never print.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWER_LAYERS = ("tasks", "models", "aoi")


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative imports resolved against
    ``package`` (default: the package of ``path`` in this repository)."""
    package = package or ".".join(["s2agri", *path.relative_to(ROOT).parent.parts])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


@pytest.mark.parametrize("layer", LOWER_LAYERS)
def test_lower_layers_do_not_import_workflows(layer: str) -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, module in imported_modules(path)
        if module == "s2agri.workflows" or module.startswith("s2agri.workflows.")
    ]
    assert not offending, "\n".join(offending)


def test_imported_modules_resolves_relative_and_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("from ..export import atomic_path\ndef f():\n    from s2agri.workflows import cli\n")
    found = imported_modules(module, "s2agri.tasks.sources")
    assert sorted(found) == [(1, "s2agri.tasks.export"), (3, "s2agri.workflows")]


def _workflow_modules() -> list[Path]:
    """The workflow modules: ``workflows/`` without the command line."""
    return [
        path
        for path in sorted((ROOT / "workflows").rglob("*.py"))
        if path.name != "cli.py" and "commands" not in path.relative_to(ROOT).parts
    ]


def test_workflows_do_not_import_the_command_line_nor_argparse() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _workflow_modules()
        for line, module in imported_modules(path)
        if module == "argparse"
        or module in ("s2agri.workflows.cli", "s2agri.workflows.commands")
        or module.startswith("s2agri.workflows.commands.")
    ]
    assert not offending, "\n".join(offending)


def test_workflows_print_nothing() -> None:
    """Workflows log; the command modules print their results."""
    offending = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _workflow_modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert not offending, "\n".join(offending)


#: The layers below ``workflows``, bottom first; a module may import its own layer and those below.
#: ``bottom``: errors, feature keys, atomic I/O and the output contract, importable by everyone.
LAYER_ORDER: dict[str, tuple[str, ...]] = {
    "bottom": (
        "s2agri.tasks",
        "s2agri.tasks.errors",
        "s2agri.tasks.contract",
        "s2agri.tasks.safe_io",
        "s2agri.tasks.atomic_io",
        "s2agri.tasks.outputs",
        "s2agri.tasks.version",
        "s2agri.tasks.secrets",
        "s2agri.models",
        "s2agri.models.names",
        "s2agri.models.registry",
        "s2agri.models.trainer_config",
    ),
    "sources": (
        "s2agri.tasks.sources",
        "s2agri.tasks.sources.",
        "s2agri.tasks.postgis_db",
        "s2agri.tasks.reference",
    ),
    "features": (
        "s2agri.tasks.masks",
        "s2agri.tasks.weights",
        "s2agri.tasks.metrics",
        "s2agri.tasks.objects",
        "s2agri.tasks.tensors",
        "s2agri.tasks.monthly",
        "s2agri.tasks.seasonal",
        "s2agri.tasks.stats5x5",
        "s2agri.tasks.delineation",
        "s2agri.tasks.resolution",
        "s2agri.tasks.zonal",
        "s2agri.tasks.parcel_series",
    ),
    "models": ("s2agri.models.",),
    "prediction": (
        "s2agri.tasks.prediction",
        "s2agri.tasks.predict_deep",
        "s2agri.tasks.predict_parcel",
        "s2agri.tasks.predict_pixel",
    ),
    "vectors": ("s2agri.tasks.instances", "s2agri.tasks.vectorise", "s2agri.tasks.merge"),
    "export": (
        "s2agri.tasks.export",
        "s2agri.tasks.vector_export",
        "s2agri.tasks.postgis_export",
        "s2agri.tasks.mosaic",
    ),
    "aoi": ("s2agri.aoi", "s2agri.aoi."),
}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYER_ORDER` of ``module``: an exact name, else the longest prefix (a name ending
    in ``.`` stands for every module below that package); None for a module of no layer."""
    for index, names in enumerate(LAYER_ORDER.values()):
        if module in names:
            return index
    best: tuple[int, int] | None = None
    for index, names in enumerate(LAYER_ORDER.values()):
        for prefix in (name for name in names if name.endswith(".")):
            if module.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _lower_modules() -> list[tuple[Path, str]]:
    found = []
    for layer in LOWER_LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = ["s2agri", *path.relative_to(ROOT).with_suffix("").parts]
            found.append((path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)))
    return found


def test_every_lower_module_has_a_layer() -> None:
    unplaced = [module for _, module in _lower_modules() if layer_of(module) is None]
    assert not unplaced, f"place these modules in LAYER_ORDER: {unplaced}"


def test_layers_only_import_downwards() -> None:
    """sources -> features -> models -> prediction -> vectors -> export -> aoi, over a common bottom."""
    names = list(LAYER_ORDER)
    offending = []
    for path, module in _lower_modules():
        own = layer_of(module)
        assert own is not None
        for line, imported in imported_modules(path):
            target = layer_of(imported) if imported.startswith("s2agri.") else None
            if target is not None and target > own:
                offending.append(
                    f"{path.relative_to(ROOT)}:{line} ({names[own]}) imports {imported} ({names[target]})"
                )
    assert not offending, "\n".join(offending)


def test_layer_of_places_modules() -> None:
    assert layer_of("s2agri.tasks.outputs") == 0 and layer_of("s2agri.models") == 0
    assert layer_of("s2agri.tasks.sources.simulator.scene") == 1
    assert layer_of("s2agri.models.unet") == 3 and layer_of("s2agri.models.registry") == 0
    assert layer_of("s2agri.tasks.export") == 6 and layer_of("s2agri.aoi.grid") == 7
    assert layer_of("s2agri.workflows.cli") is None

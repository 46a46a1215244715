"""Layers only point down: ``tasks``, ``models`` and ``aoi`` never import ``workflows`` (nor the CLI).

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

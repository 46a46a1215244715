"""Every ``bash`` and ``python`` block of the README runs verbatim, in order, in one fresh folder.

Blocks right after a ``<!-- readme-test: skip ... -->`` line are left out (``make demo`` / ``make
test``, which the fresh-clone check runs, and the Sentinel Hub example, which needs an account).
Output blocks (plain fences) are illustrations and are not compared. Bash blocks run with
``set -euo pipefail``: a command that fails on purpose says so with ``|| test $? -eq CODE``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = "<!-- readme-test: skip"
FENCE = re.compile(r"^```(?P<lang>[a-z]*)\s*$")


def readme_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, code) of the fenced blocks of ``text`` that the test runs."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match["lang"]
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        skipped = start > 0 and lines[start - 1].startswith(SKIP)
        if lang in ("bash", "python") and not skipped:
            blocks.append((start + 1, lang, "\n".join(lines[start + 1 : end]) + "\n"))
        i = end + 1
    return blocks


def test_readme_blocks_are_found_and_skips_are_explained() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = readme_blocks(text)
    assert len(blocks) >= 10 and {lang for _, lang, _ in blocks} == {"bash", "python"}
    assert all("make demo" not in code for _, _, code in blocks)  # the skipped first block
    # a README transcript of a command (a '$ s2agri' line) must be a runnable block or a marked skip
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("$ s2agri"):
            opening = max(j for j in range(number) if lines[j].startswith("```"))
            assert lines[opening - 1].startswith(SKIP), f"README line {number + 1}: make it a bash block"


@pytest.mark.slow
def test_readme_runs_verbatim(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONWARNINGS", None)
    for line, lang, code in readme_blocks(README.read_text(encoding="utf-8")):
        command = (
            ["bash", "-c", "set -euo pipefail\n" + code] if lang == "bash" else [sys.executable, "-c", code]
        )
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"README block at line {line} failed:\n{code}\n{result.stderr[-3000:]}"
    # what the blocks say they make
    assert (tmp_path / "rd" / "run" / "parcels.gpkg").is_file() and (
        tmp_path / "rd" / "parcels.fgb"
    ).is_file()
    assert (tmp_path / "rd" / "run-mixed" / "failed.json").is_file()
    assert (tmp_path / "out" / "parcels.parquet").is_file() and (tmp_path / "grid.gpkg").is_file()
    assert not (tmp_path / "rd" / "run-bad").exists()  # the bad config wrote nothing

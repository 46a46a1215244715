"""Safety: everything is checked before work.

Issue 18's class of fault 8: a bad PostGIS table was refused after the whole region ran, a missing model left an empty `--out`, staging folders of killed runs stayed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from s2agri.workflows import cli
from s2agri.workflows.region import RegionConfig
from s2agri.workflows.runs import staged_folder


def test_a_missing_model_fails_before_any_write(tmp_path: Path, capsys) -> None:
    config = tmp_path / "region.yaml"
    config.write_text(f"model: {tmp_path / 'no-such-model'}\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(config), "--out", str(out)]) == 2
    assert "no model_card.json there" in capsys.readouterr().err
    assert not out.exists()


def test_staging_folders_of_killed_runs_are_removed(tmp_path: Path, caplog) -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # that process has exited
    out = tmp_path / "out"
    killed = tmp_path / f".out.tmp-{dead_pid}-abc"
    running = tmp_path / f".out.tmp-{os.getpid()}-xyz"  # a live process's staging folder
    legacy = tmp_path / ".out.tmp-q1w2e3"
    for folder in (killed, running, legacy):
        folder.mkdir()
        (folder / "part.txt").write_text("x")
    with staged_folder(out) as staging:
        assert staging.name.startswith(f".out.tmp-{os.getpid()}-")
        (staging / "done.txt").write_text("y")
    assert not killed.exists() and running.is_dir() and legacy.is_dir()
    assert f"removed {killed}" in caplog.text and f"{legacy} was left by an earlier s2agri run" in caplog.text
    assert (out / "done.txt").read_text() == "y"


def test_a_bad_postgis_table_is_refused_with_the_config() -> None:
    with pytest.raises(ValidationError, match="table name 'bad-name' is not a plain SQL name"):
        RegionConfig.model_validate({"export": {"postgis": {"uri": "postgresql://u@h/db?table=bad-name"}}})

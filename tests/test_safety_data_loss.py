"""Safety: no command deletes a user's input.

Issue 18's class of fault 5: `--overwrite` with an `--out` that is or holds an input deleted it; two runs into one `--out` replaced each other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_workflows import FAST_CONFIG, config_file, model, region  # noqa: F401 (fixtures)

from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows import cli
from s2agri.workflows.runs import staged_folder


def test_overwrite_never_replaces_an_input(region: Path, model: Path, tmp_path: Path, capsys) -> None:
    box = region / "eopatches" / "box-003"
    for out in (box, region, model, model / "report", box / "data"):
        code = cli.main(["predict", str(box), "--model", str(model), "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and "overlaps the input" in err, out
    assert (box / "bbox.geojson").exists() or any(box.glob("bbox*"))
    assert (model / "model_card.json").is_file()
    code = cli.main(["train", str(box), "--out", str(region), "--overwrite"])
    assert code == 2 and "overlaps the input" in capsys.readouterr().err
    assert box.is_dir()


def test_a_run_published_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(S2AgriInputError, match="written by another run"), staged_folder(out) as staging:
        (staging / "mine.txt").write_text("late")
        out.mkdir()  # another command published first
        (out / "theirs.txt").write_text("first")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the staging folder is gone

"""Safety: one line, not a traceback.

Issue 18's class of fault 7: truncated model files, binary configs, `--workers 0`, absurd sizes, a full disk, 3-D BANDS ended in tracebacks.
"""

from __future__ import annotations

import argparse
import errno
import logging
from pathlib import Path

import numpy as np
import pytest
from test_baselines import FAST, data, fitted  # noqa: F401 (fixtures)

from s2agri.models.registry import load_model
from s2agri.workflows import cli


def test_a_feature_with_wrong_dimensions_is_one_line(write_eopatch, tmp_path: Path, capsys) -> None:
    """3-D BANDS ended in a traceback inside eo-learn's executor; now preflight names it."""
    import gzip

    box = write_eopatch("box-3d")
    next(box.glob("data/BANDS.npy*")).unlink()
    with gzip.open(box / "data" / "BANDS.npy.gz", "wb") as handle:
        np.save(handle, np.zeros((3, 20, 20), np.uint16))
    out = tmp_path / "run"
    assert cli.main(["predict", str(box), "--model", "ndvi-rule", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "box-3d: data/BANDS has 3 dimensions, expected 4" in err and not out.exists()


def test_careless_arguments_get_one_line(tmp_path, capsys) -> None:
    """Bad values that used to end in tracebacks or MemoryError: one line, exit 2, nothing written."""
    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    huge = tmp_path / "huge.yaml"
    huge.write_text("train: {max_samples: 100000000000}\n")
    cases = [
        (
            ["train", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(binary)],
            "is not a text file",
        ),
        (["train", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(huge)], "max_samples"),
        (
            ["simulate", str(tmp_path / "s"), "--boxes", "1", "--size", "8", "--seed", "0", "--workers", "0"],
            "below 1",
        ),
        (
            [
                "predict",
                str(tmp_path),
                "--model",
                "ndvi-rule",
                "--out",
                str(tmp_path / "p"),
                "--workers",
                "-2",
            ],
            "below 1",
        ),
    ]
    for argv, message in cases:
        code = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and message in err[-1], (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "huge.yaml"]


def test_a_full_disk_is_one_line(monkeypatch, capsys) -> None:
    def full(_args):
        assert logging.raiseExceptions is False  # a log line that cannot be written is dropped quietly
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/x.tif")

    monkeypatch.setattr(cli, "build_parser", _parser_running(full))
    assert cli.main(["x"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "s2agri: error: cannot write /data/out/x.tif (No space left on device): free some space or choose a "
        "folder you may write to\n"
    )
    assert logging.raiseExceptions is True  # restored for the caller


def _parser_running(handler):
    def build():
        parser = argparse.ArgumentParser()
        parser.add_argument("command")
        parser.add_argument("-v", "--verbose", action="count", default=0)
        parser.set_defaults(run=handler)
        return parser

    return build


def test_atomic_text_writes_leave_nothing_on_a_full_disk(tmp_path, monkeypatch) -> None:
    from s2agri.workflows.runs import write_json

    (tmp_path / "failed.json").write_text("{}")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        write_json(tmp_path / "failed.json", {"box": "reason"})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["failed.json"]  # no .failed.json.tmp-* left
    assert (tmp_path / "failed.json").read_text() == "{}"


@pytest.mark.parametrize("cut", ["empty", "half", "no-end"])
def test_lightgbm_refuses_empty_and_truncated_files(fitted, tmp_path: Path, cut: str) -> None:
    """LightGBM itself reads a truncated text model without complaint (a silently smaller model)."""
    text = fitted["lightgbm"].save(tmp_path / "model.txt").read_text()
    broken = tmp_path / f"{cut}.txt"
    broken.write_text(
        {"empty": "", "half": text[: len(text) // 2], "no-end": text.replace("end of trees", "")}[cut]
    )
    with pytest.raises(ValueError, match="not a complete LightGBM text model"):
        load_model("lightgbm", broken)

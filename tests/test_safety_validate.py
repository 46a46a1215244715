"""Safety: `validate` finds what later fails.

Issue 18's class of fault 9: boxes with repeated timestamps or no pixel passed `s2agri validate` and failed in `predict`.
"""

from __future__ import annotations

from pathlib import Path

from eopatch_factory import build_eopatch

from s2agri.workflows.validate import validate_eopatch


def test_repeated_timestamps_and_empty_boxes_are_violations(tmp_path: Path) -> None:
    """Boxes that validate passed and predict then failed on."""
    repeated = build_eopatch()
    repeated.timestamps = [repeated.timestamps[0], repeated.timestamps[0], repeated.timestamps[2]]
    repeated.save(str(tmp_path / "repeated"))
    assert [str(v) for v in validate_eopatch(tmp_path / "repeated")] == [
        "timestamps: 1 acquisition time(s) repeated (2019-03-01 00:00:00): merge the frames of one acquisition "
        "into one"
    ]
    build_eopatch(size=0).save(str(tmp_path / "empty"))
    assert "data/BANDS: size 0x0 px (H x W): a box needs at least 1 x 1 px" in [
        str(v) for v in validate_eopatch(tmp_path / "empty")
    ]

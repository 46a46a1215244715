"""The ``s2agri`` command line: exit codes, output lines and the input-error convention."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from s2agri.tasks import contract
from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows import cli
from s2agri.workflows.validate import Violation


@pytest.fixture
def fake_simulate(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[argparse.Namespace], int]], None]:
    """Install a stand-in ``s2agri.workflows.commands.simulate`` module whose ``simulate_command`` is given."""

    def install(handler: Callable[[argparse.Namespace], int]) -> None:
        module = types.ModuleType("s2agri.workflows.commands.simulate")
        module.simulate_command = handler  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "s2agri.workflows.commands.simulate", module)

    return install


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"s2agri {version('s2agri')}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_help_lists_every_registered_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    names = [command.name for command in cli.COMMANDS]
    assert len(set(names)) == len(names)
    assert all(f"    {command.name}  " in out and command.help in out for command in cli.COMMANDS)


# --- validate --------------------------------------------------------------------------------------


def test_validate_ok(write_eopatch: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    patch = write_eopatch()
    assert cli.main(["validate", str(patch)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK {patch}", "validated 1 EOPatch: 1 OK"]


def test_validate_reports_every_violation(
    write_eopatch: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_eopatch("good")
    bad = write_eopatch("bad")
    (bad / "data" / "BANDS.npy.gz").unlink()
    (bad / "mask_timeless" / "ALL_POLYS.npy.gz").unlink()
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("")

    assert cli.main(["validate", str(good), str(bad), str(not_a_folder)]) == 1
    partial = Violation(
        "mask_timeless/ALL_POLYS",
        "missing, while mask_timeless/CULTIVATED, mask_timeless/NOT_DECLARED are present: "
        "a box with reference masks needs all three",
    )
    assert capsys.readouterr().out.splitlines() == [
        f"OK {good}",
        f"{bad}: data/BANDS: missing: a required input feature",
        f"{bad}: {partial}",
        f"{not_a_folder}: eopatch: not a folder",
        "validated 3 EOPatches: 1 OK, 2 with 3 violations",
    ]


def test_validate_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate"]) == 2
    assert "the following arguments are required: PATH" in capsys.readouterr().err


def test_verbose_sets_the_log_level(write_eopatch: Callable[..., Path]) -> None:
    patch = str(write_eopatch())
    assert cli.main(["validate", patch]) == 0
    assert logging.getLogger("s2agri").level == logging.WARNING
    assert cli.main(["-v", "validate", patch]) == 0
    assert logging.getLogger("s2agri").level == logging.INFO
    assert cli.main(["-vv", "validate", patch]) == 0
    assert logging.getLogger("s2agri").level == logging.DEBUG
    # after the command too, as analysts type it; counts before and after add up
    assert cli.main(["validate", patch, "-v"]) == 0
    assert logging.getLogger("s2agri").level == logging.INFO
    assert cli.main(["-v", "validate", "-v", patch]) == 0
    assert logging.getLogger("s2agri").level == logging.DEBUG
    for argv in (["-q", "validate", patch], ["validate", patch, "--quiet"], ["-vv", "validate", patch, "-q"]):
        assert cli.main(argv) == 0
        assert logging.getLogger("s2agri").level == logging.ERROR, argv


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "parallel worker processes (default: 1)" in text and "-q, --quiet log errors only" in text
    assert "(default: None)" not in text and "(default: False)" not in text


# --- simulate --------------------------------------------------------------------------------------


def test_simulate_passes_parsed_arguments(fake_simulate: Callable[..., None], tmp_path: Path) -> None:
    received: list[argparse.Namespace] = []
    fake_simulate(lambda args: received.append(args) or 0)
    out = str(tmp_path / "sim")
    assert cli.main(["simulate", out, "--boxes", "2", "--size", "100", "--seed", "1"]) == 0
    [args] = received
    assert (args.out, args.boxes, args.size, args.seed) == (out, 2, 100, 1)
    assert (args.frames_min, args.frames_max) == (contract.MIN_FRAMES, contract.MAX_FRAMES)
    assert (args.workers, args.overwrite) == (1, False)


def test_simulate_optional_arguments(fake_simulate: Callable[..., None]) -> None:
    received: list[argparse.Namespace] = []
    fake_simulate(lambda args: received.append(args) or 0)
    argv = ["simulate", "o", "--boxes", "1", "--size", "50", "--seed", "7"]
    argv += ["--frames-min", "20", "--frames-max", "30", "--workers", "2", "--overwrite"]
    assert cli.main(argv) == 0
    [args] = received
    assert (args.frames_min, args.frames_max, args.workers, args.overwrite) == (20, 30, 2, True)


def test_simulate_missing_required_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "out", "--boxes", "2", "--seed", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "s2agri simulate: error: the following arguments are required: --size"
    )


def test_simulate_non_integer_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "out", "--boxes", "two", "--size", "10", "--seed", "1"]) == 2
    assert "argument --boxes: invalid int value: 'two'" in capsys.readouterr().err


def test_input_error_is_one_line_and_exit_2(
    fake_simulate: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    def reject(args: argparse.Namespace) -> int:
        raise S2AgriInputError(f"--boxes must be at least 1, got {args.boxes}\n(see s2agri simulate --help)")

    fake_simulate(reject)
    assert cli.main(["simulate", "out", "--boxes", "0", "--size", "10", "--seed", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "s2agri: error: --boxes must be at least 1, got 0 (see s2agri simulate --help)\n"
    assert captured.out == ""


def test_other_errors_keep_their_traceback(fake_simulate: Callable[..., None]) -> None:
    def crash(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    fake_simulate(crash)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["simulate", "out", "--boxes", "1", "--size", "10", "--seed", "1"])


def test_interrupt_exits_130(fake_simulate: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    fake_simulate(interrupt)
    assert cli.main(["simulate", "out", "--boxes", "1", "--size", "10", "--seed", "1"]) == 130
    assert capsys.readouterr().err == "s2agri: interrupted\n"


def test_real_simulate_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("s2agri.workflows.simulate", reason="the simulate workflow is not written yet")
    argv = ["simulate", str(tmp_path / "out"), "--boxes", "0", "--size", "100", "--seed", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("s2agri: error: ")


# --- console script --------------------------------------------------------------------------------


def test_console_script_version() -> None:
    script = shutil.which("s2agri", path=str(Path(sys.executable).parent))
    assert script is not None, (
        "the s2agri console script is not installed next to the python running the tests"
    )
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, f"s2agri {version('s2agri')}")
    assert result.stderr == ""


def test_the_parser_does_not_import_torch() -> None:
    """--help and --version took 5 s because building the parser imported torch."""
    code = "import sys; from s2agri.workflows import cli; cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_config_show_prints_commented_defaults_that_read_back(tmp_path: Path, capsys) -> None:
    from s2agri.workflows.config import MappingConfig, load_config

    assert cli.main(["config", "show"]) == 0
    text = capsys.readouterr().out
    assert "# stats5x5 only: odd window side\n  window: 5" in text
    assert "  samples_per_epoch: 512" in text and "    selection: val_weighted_mcc" in text
    path = tmp_path / "shown.yaml"
    path.write_text(text)
    assert load_config(path) == MappingConfig()
    assert cli.main(["config", "show", "--config", "seed000"]) == 0
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == load_config("seed000")
    assert load_config(path).features.kind == "stats5x5"


def test_config_show_region_and_schema(capsys) -> None:
    import json

    assert cli.main(["config", "show", "--region"]) == 0
    assert "aoi: demo" in capsys.readouterr().out
    assert cli.main(["config", "show", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and "deep" in schema["properties"]
    assert cli.main(["config", "show", "--config", "no-such-recipe"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_workers_do_not_repeat_deprecation_warnings(tmp_path: Path) -> None:
    """Two worker processes, as a user runs them: no pkg_resources or str(BBox) warnings on stderr."""
    script = str(Path(sys.executable).with_name("s2agri"))
    result = subprocess.run(
        [
            script,
            "simulate",
            str(tmp_path / "sim"),
            "--boxes",
            "2",
            "--size",
            "40",
            "--seed",
            "0",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "deprecated" not in result.stderr
    assert len(list((tmp_path / "sim" / "eopatches").iterdir())) == 2


def test_debug_log_is_short_and_names_no_staging_folder(tmp_path: Path) -> None:
    """-vv: s2agri's debug lines only (libraries need -vvv); no log line, report or run file names the
    temporary staging folder the run was written into."""
    script = str(Path(sys.executable).with_name("s2agri"))
    data = tmp_path / "sim"
    simulate = [script, "simulate", str(data), "--boxes", "2", "--size", "40", "--seed", "0"]
    subprocess.run([*simulate, "--frames-min", "6", "--frames-max", "8"], check=True, capture_output=True)
    result = subprocess.run(
        [
            script,
            "-vv",
            "predict",
            str(data / "eopatches"),
            "--model",
            "ndvi-rule",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(" DEBUG s2agri." in line for line in lines)
    assert not [line for line in lines if " DEBUG " in line and " DEBUG s2agri." not in line]
    assert len(lines) < 60, "\n".join(lines)
    assert ".tmp-" not in result.stderr and f"{tmp_path / 'run'}/submission" in result.stderr
    run = tmp_path / "run"
    texts = [
        *run.glob("report/**/*.html"),
        *run.glob("report/**/*.log"),
        *run.glob("*.json"),
        *run.rglob("stac/**/*.json"),
    ]
    assert len(texts) >= 5
    assert not [path for path in texts if ".run.tmp-" in path.read_text(encoding="utf-8")]

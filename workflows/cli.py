"""The ``s2agri`` command line.

Each subcommand is one :class:`Command` in :data:`COMMANDS`: a function adding its arguments
and a handler ``(args) -> exit status`` that imports its workflow lazily, so ``s2agri --help``
stays fast. To add a subcommand, write the two functions and register them in ``COMMANDS``.

Exit status: 0 success, 1 a check failed (e.g. ``validate`` found violations), 2 bad input
(argparse errors and :class:`~s2agri.workflows.errors.S2AgriInputError`, printed as one line
``s2agri: error: <message>``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from s2agri.workflows.errors import S2AgriInputError

logger = logging.getLogger(__name__)

PROG = "s2agri"
EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, argument builder and handler."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    from s2agri.tasks import contract

    parser.add_argument("out", metavar="OUT", help="output folder (EOPatches go to OUT/eopatches)")
    parser.add_argument("--boxes", type=int, required=True, metavar="N", help="number of boxes to simulate")
    parser.add_argument(
        "--size", type=int, required=True, metavar="PX", help="input size of a box in 10 m pixels"
    )
    parser.add_argument(
        "--seed", type=int, required=True, metavar="S", help="random seed (same seed, same data)"
    )
    parser.add_argument(
        "--frames-min", type=int, default=contract.MIN_FRAMES, metavar="T", help="fewest acquisitions per box"
    )
    parser.add_argument(
        "--frames-max", type=int, default=contract.MAX_FRAMES, metavar="T", help="most acquisitions per box"
    )
    parser.add_argument("--workers", type=int, default=1, metavar="W", help="parallel worker processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _run_simulate(args: argparse.Namespace) -> int:
    from s2agri.workflows.simulate import simulate_command

    return simulate_command(args)


def _add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="EOPatch folders (eo-learn 1.x or legacy 0.x layout)"
    )


def _run_validate(args: argparse.Namespace) -> int:
    from s2agri.workflows.validate import validate_command

    return validate_command(args)


#: Every subcommand, in the order ``s2agri --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("simulate", "write simulated challenge-like EOPatches", _add_simulate_arguments, _run_simulate),
    Command(
        "validate", "check EOPatch folders against the data contract", _add_validate_arguments, _run_validate
    ),
)


def package_version() -> str:
    """The installed s2agri version."""
    try:
        return version("s2agri")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Map cultivated land from Sentinel-2 time series (AI4EO challenge data contract).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log progress to stderr (-v info, -vv debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def configure_logging(verbosity: int) -> None:
    """WARNING by default, INFO with ``-v``, DEBUG with ``-vv``; messages go to stderr."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    # the handler filters, not only the logger: eo-learn's EOExecutor lowers the root logger to DEBUG
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("s2agri").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    # fs, imported by eo-learn, warns on every run about pkg_resources; users cannot act on it.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INPUT_ERROR)
    configure_logging(args.verbose)
    logger.debug("s2agri %s: %s", package_version(), args)
    try:
        return args.run(args)
    except S2AgriInputError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception holds
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

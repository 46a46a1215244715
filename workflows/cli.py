"""The ``s2agri`` command line.

Each subcommand is one :class:`Command` in :data:`COMMANDS`: a function adding its arguments
and a handler ``(args) -> exit status`` that imports its workflow lazily, so ``s2agri --help``
stays fast. To add a subcommand, write the two functions and register them in ``COMMANDS``.

Exit status: 0 success, 1 a check failed (e.g. ``validate`` found violations), 2 bad input
(argparse errors and :class:`~s2agri.tasks.errors.S2AgriInputError`, printed as one line
``s2agri: error: <message>``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from s2agri.models.names import TRAINABLE_MODELS

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
    parser.add_argument(
        "--workers", type=positive_int, default=1, metavar="W", help="parallel worker processes"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _run_simulate(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.simulate import simulate_command

    return simulate_command(args)


def _add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="EOPatch folders (eo-learn 1.x or legacy 0.x layout)"
    )


def _run_validate(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.validate import validate_command

    return validate_command(args)


def _add_boxes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "boxes",
        nargs="+",
        metavar="BOXES",
        help="EOPatch folders, folders of EOPatches, or the output of 's2agri simulate'",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="YAML/JSON workflow config (default: built-in defaults)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="W",
        help="boxes in parallel (overrides the config's 'workers')",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_boxes_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    parser.add_argument(
        "--model",
        choices=TRAINABLE_MODELS,
        metavar="NAME",
        help=f"model to fit (overrides train.model): {', '.join(TRAINABLE_MODELS)}",
    )
    parser.add_argument(
        "--preset",
        choices=("cpu", "paper"),
        help="model size of the torch models (overrides train.preset): cpu defaults or the seed's paper size",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="deep models: continue the interrupted run into OUT (or OUT's published run, e.g. with more "
        "deep.trainer.max_epochs) from its last checkpoint, exactly as if it had not stopped",
    )
    _add_run_options(parser)


def _run_train(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.train import train_command

    return train_command(args)


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    _add_boxes_argument(parser)
    parser.add_argument(
        "--model", required=True, metavar="MODEL", help="a folder written by 's2agri train', or 'ndvi-rule'"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    _add_run_options(parser)


def _run_predict(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.predict import predict_command

    return predict_command(args)


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by 's2agri predict'")
    parser.add_argument("--out", metavar="DIR", help="folder for metrics.json/.csv (default: the run)")
    parser.add_argument(
        "--quicklooks", action="store_true", help="also draw DIR/quicklooks/<box>.png (TP/FP/FN maps)"
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.evaluate import evaluate_command

    return evaluate_command(args)


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_boxes_argument(parser)
    parser.add_argument(
        "--parcels", metavar="FILE", help="vector file of all parcels (.gpkg .geojson .fgb .parquet .shp)"
    )
    parser.add_argument("--layer", default="parcels", help="layer name in a GeoPackage (default: parcels)")
    parser.add_argument("--submission", metavar="DIR", help="folder for the submission GeoTIFFs")
    parser.add_argument("--proba", metavar="DIR", help="folder for the probability COGs")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FILE")


def _run_export(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.export import export_command

    return export_command(args)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from s2agri.workflows import demo_settings as demo

    parser.add_argument("--out", required=True, metavar="DIR", help="folder for everything the demo writes")
    parser.add_argument("--seed", type=int, default=demo.DEFAULT_SEED, help="simulation seed")
    parser.add_argument("--size", type=int, default=demo.DEFAULT_SIZE, metavar="PX", help="box size, 10 m px")
    parser.add_argument("--train-boxes", type=int, default=demo.DEFAULT_TRAIN, metavar="N")
    parser.add_argument("--test-boxes", type=int, default=demo.DEFAULT_TEST, metavar="N")
    _add_run_options(parser)


def _run_demo(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.demo import demo_command

    return demo_command(args)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print a config with every default, each key commented",
        description="print the resolved config (defaults, a recipe or FILE) as commented YAML that --config reads",
    )
    show.add_argument(
        "--config", metavar="FILE", help="a config file or recipe name to resolve (default: none)"
    )
    show.add_argument(
        "--region", action="store_true", help="the config of 's2agri run' instead of train/predict"
    )
    show.add_argument("--schema", action="store_true", help="print the JSON schema instead")


def _run_config(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.config_show import config_show_command

    return config_show_command(args)


def _add_aoi_arguments(parser: argparse.ArgumentParser) -> None:
    from s2agri.aoi import DEFAULT_MAX_BOXES, DEFAULT_SIZE_M

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    split = actions.add_parser(
        "split",
        help="split an AOI into a UTM grid of square boxes",
        description="split an AOI into a UTM grid of square boxes named <epsg>_<min_x>_<min_y>",
    )
    split.add_argument(
        "aoi",
        metavar="AOI",
        help="AOI polygons (.gpkg .geojson .shp .fgb .parquet), or 'demo' for the AOI shipped with s2agri",
    )
    split.add_argument(
        "--out", required=True, metavar="FILE", help="grid file (.gpkg .geojson .fgb .parquet .shp)"
    )
    split.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE_M,
        metavar="M",
        help=f"box side in metres (default {DEFAULT_SIZE_M})",
    )
    split.add_argument(
        "--buffer", type=int, default=0, metavar="M", help="grow each box by M metres (default 0)"
    )
    split.add_argument("--layer", help="layer of a multi-layer AOI file")
    split.add_argument(
        "--crs", metavar="auto|EPSG:CODE", help="reproject the AOI to its UTM zone (auto) or to a UTM CRS"
    )
    split.add_argument("--repair", action="store_true", help="fix invalid AOI polygons with make_valid")
    split.add_argument(
        "--max-boxes",
        type=positive_int,
        default=DEFAULT_MAX_BOXES,
        metavar="N",
        help=f"refuse more boxes than N without --yes (default {DEFAULT_MAX_BOXES})",
    )
    split.add_argument("--yes", action="store_true", help="make more than --max-boxes boxes")
    split.add_argument("--overwrite", action="store_true", help="replace an existing FILE")


def _run_aoi(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.aoi import aoi_command

    return aoi_command(args)


def _add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    from s2agri.tasks import contract
    from s2agri.workflows.sources import EARTH_SEARCH, SOURCE_KINDS

    parser.add_argument("out", metavar="OUT", help="EOPatch folder to write")
    parser.add_argument(
        "--source", choices=SOURCE_KINDS, default="simulator", help="where the time series comes from"
    )
    parser.add_argument(
        "--bbox", required=True, metavar="MINX,MINY,MAXX,MAXY", help="box corners in --crs units"
    )
    parser.add_argument("--crs", required=True, metavar="EPSG", help="CRS of --bbox, e.g. 32633 or 4326")
    parser.add_argument(
        "--time",
        metavar="START/END",
        help="ISO dates, e.g. 2019-03-01/2019-09-01 (default: the challenge season)",
    )
    parser.add_argument(
        "--maxcc", type=float, default=0.5, metavar="F", help="largest scene cloud cover 0..1"
    )
    parser.add_argument(
        "--resolution",
        type=float,
        default=contract.INPUT_RESOLUTION_M,
        metavar="M",
        help="pixel size in metres",
    )
    parser.add_argument(
        "--parcels",
        metavar="URI",
        help="geodb://DB/COLLECTION | postgresql://host/db?table=NAME | a vector file",
    )
    parser.add_argument("--parcels-layer", metavar="LAYER", help="layer of a multi-layer parcel file")
    parser.add_argument(
        "--label-column", default="label", metavar="COL", help="parcel column with label codes"
    )
    parser.add_argument("--id-column", default="id", metavar="COL", help="parcel id column")
    parser.add_argument("--clip", action="store_true", help="clip parcels to the box (GeoDB)")
    stac = parser.add_argument_group("stac")
    stac.add_argument("--catalog", default=EARTH_SEARCH, metavar="URL")
    stac.add_argument("--collection", default="sentinel-2-l2a", metavar="NAME")
    sim = parser.add_argument_group("simulator")
    sim.add_argument("--seed", type=int, default=0, metavar="S")
    sim.add_argument("--frames-min", type=int, default=contract.MIN_FRAMES, metavar="T")
    sim.add_argument("--frames-max", type=int, default=contract.MAX_FRAMES, metavar="T")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _run_fetch(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.fetch import fetch_command

    return fetch_command(args)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG", help="region config (YAML/JSON): aoi, grid, source, model, ..."
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="region output folder")
    parser.add_argument("--resume", action="store_true", help="continue a run: skip boxes already done")
    parser.add_argument("--retry-failed", action="store_true", help="also redo boxes listed in failed.json")
    parser.add_argument("--engine", choices=("processes", "ray"), help="overrides engine.kind")
    parser.add_argument(
        "--ray-address", metavar="ADDR", help="'auto' or 'ray://host:port' (implies --engine ray)"
    )
    parser.add_argument("--workers", type=positive_int, metavar="W", help="overrides engine.workers")
    parser.add_argument("--yes", action="store_true", help="accept a grid above grid.max_boxes")


def _run_run(args: argparse.Namespace) -> int:
    from s2agri.workflows.commands.region import run_command

    return run_command(args)


#: Every subcommand, in the order ``s2agri --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command(
        "demo", "simulate, train, predict, evaluate and export in one go", _add_demo_arguments, _run_demo
    ),
    Command("simulate", "write simulated challenge-like EOPatches", _add_simulate_arguments, _run_simulate),
    Command(
        "fetch",
        "fetch one box of L2A data and parcels into an EOPatch",
        _add_fetch_arguments,
        _run_fetch,
    ),
    Command(
        "validate", "check EOPatch folders against the data contract", _add_validate_arguments, _run_validate
    ),
    Command(
        "train",
        "fit a model on boxes with a reference",
        _add_train_arguments,
        _run_train,
    ),
    Command(
        "predict",
        "map cultivated land and parcels of boxes with a model",
        _add_predict_arguments,
        _run_predict,
    ),
    Command(
        "run",
        "map a whole region from one config file",
        _add_run_arguments,
        _run_run,
    ),
    Command(
        "evaluate", "score predicted runs against their reference", _add_evaluate_arguments, _run_evaluate
    ),
    Command("export", "write predicted parcels and rasters to GIS files", _add_export_arguments, _run_export),
    Command("aoi", "split an area of interest into a UTM grid of boxes", _add_aoi_arguments, _run_aoi),
    Command("config", "show the workflow configs with their defaults", _add_config_arguments, _run_config),
)


def package_version() -> str:
    """The installed s2agri version (as :func:`s2agri.tasks.version.package_version`, which the CLI
    does not import: ``s2agri.tasks`` loads eo-learn, and ``--version`` must stay instant)."""
    try:
        return version("s2agri")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help when it has a meaningful one (not None, False, 0-count)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
            or isinstance(action, argparse._CountAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Map cultivated land from Sentinel-2 time series (AI4EO challenge data contract).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log progress to stderr (-v info, -vv debug, -vvv libraries too)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    # the same options after the command (s2agri predict ... -v); their own names so neither overrides the other
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "-v", "--verbose", dest="verbose_after", action="count", default=argparse.SUPPRESS,
        help="log progress to stderr (-v info, -vv debug, -vvv libraries too)",
    )  # fmt: skip
    after.add_argument(
        "-q",
        "--quiet",
        dest="quiet_after",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log errors only",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            parents=[after],
            formatter_class=_DefaultsHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at emit time (not at creation)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def verbosity(args: argparse.Namespace) -> int:
    """-1 with ``--quiet``, else the number of ``-v`` before and after the command."""
    if getattr(args, "quiet", False) or getattr(args, "quiet_after", False):
        return -1
    return int(getattr(args, "verbose", 0)) + int(getattr(args, "verbose_after", 0))


def configure_logging(verbosity: int) -> None:
    """WARNING by default, INFO with ``-v``, s2agri's DEBUG with ``-vv`` (every library's with ``-vvv``),
    ERROR with ``--quiet`` (-1); messages go to stderr."""
    level = (
        logging.ERROR
        if verbosity < 0
        else logging.WARNING
        if verbosity == 0
        else logging.INFO
        if verbosity == 1
        else logging.DEBUG
    )
    handler = _StderrHandler()
    # the handler filters, not only the logger: eo-learn's EOExecutor lowers the root logger to DEBUG
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    if verbosity <= 0:
        # a failing box is reported in one line by s2agri; eo-learn's traceback goes to the run's logs
        handler.addFilter(lambda record: not record.name.startswith("eolearn.core.eoworkflow"))
    if verbosity == 2:
        # -vv: s2agri's debug messages; the libraries' (GDAL environments, eo-learn's EOPatch dumps) need -vvv
        handler.addFilter(lambda record: record.levelno >= logging.INFO or record.name.startswith("s2agri"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("s2agri").setLevel(level)
    # fiona warns on every GeoPackage eo-learn reads back (no .gpkg extension inside EOPatches)
    logging.getLogger("fiona").setLevel(logging.WARNING if verbosity >= 3 else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    # fs, imported by eo-learn, warns on every run about pkg_resources; users cannot act on it.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    # sentinelhub, on every BBox that eo-learn's workflow logs name
    warnings.filterwarnings("ignore", message="The string representation of `BBox` will change")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INPUT_ERROR)
    configure_logging(verbosity(args))
    # a log record that cannot be written (full disk) is dropped, not printed with a traceback each time
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        return _run(args)
    finally:
        logging.raiseExceptions = raise_exceptions


def _run(args: argparse.Namespace) -> int:
    """``args.run(args)`` with the command line's error handling: one line and an exit status."""
    # imported here: s2agri.tasks loads eo-learn, which --help and --version do not need
    from s2agri.tasks.errors import S2AgriInputError

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
    except BrokenPipeError:  # output piped into a reader that stopped (s2agri config show | head)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk, a folder without write permission, ...
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(
            f"{PROG}: error: cannot write{where} ({exc.strerror}): free some space or choose a folder you may write to\n"
        )
        logger.debug("%s", exc, exc_info=True)
        return EXIT_INPUT_ERROR


#: Errors of the machine, not of s2agri: reported in one line, no traceback.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1: give at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())

"""The ``s2agri train`` command: arguments in, a workflow of :mod:`s2agri.workflows.train` called, results printed."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from s2agri.tasks.errors import S2AgriInputError
from s2agri.workflows.config import MappingConfig, load_config, train_for_model, validation_problems
from s2agri.workflows.families import family_of
from s2agri.workflows.mapping import required_inputs
from s2agri.workflows.runs import check_out, find_boxes, preflight, staged_folder
from s2agri.workflows.train import LOGGER


@contextmanager
def _keep_checkpoints_note(checkpoints: Path | None) -> Iterator[None]:
    """On failure or Ctrl-C, say where the checkpoints are kept and how to continue."""
    try:
        yield
    except BaseException:
        if checkpoints is not None and (checkpoints / "last.pt").is_file():
            LOGGER.warning(
                "the run's checkpoints are kept in %s: rerun with --resume to continue it", checkpoints
            )
        raise


def _resumable_checkpoint(out: Path, checkpoints: Path) -> Path:
    """The ``last.pt`` that ``--resume`` continues: an interrupted run's, else the published model's."""
    for candidate in (checkpoints / "last.pt", out / "training" / "last.pt"):
        if candidate.is_file():
            # a published model's checkpoints move to the checkpoints folder, which the run then updates
            if candidate.parent != checkpoints:
                shutil.copytree(candidate.parent, checkpoints, dirs_exist_ok=True)
            return checkpoints / "last.pt"
    raise S2AgriInputError(
        f"--resume: neither {checkpoints} nor {out / 'training'} holds a last.pt (only deep and parcel models "
        "are trained in epochs that can be resumed): train without --resume"
    )


def train_command(args: argparse.Namespace) -> int:
    """Handler of ``s2agri train``."""
    config = load_config(args.config)
    updates: dict[str, Any] = {}
    preset = getattr(args, "preset", None)
    if args.model is not None or preset is not None:
        try:
            updates["train"] = train_for_model(config.train, args.model, preset)
        except ValidationError as exc:
            raise S2AgriInputError(
                f"--model {args.model or config.train.model} does not fit the config's train section "
                f"({validation_problems(exc)})"
            ) from exc
    if args.workers is not None:
        updates["workers"] = args.workers
    config = MappingConfig.model_validate({**config.model_dump(), **updates})
    resume = bool(getattr(args, "resume", False))
    family = family_of(config.train.model)
    checkpoints = None
    if resume or family.resumable:
        from s2agri.workflows.train_deep import checkpoints_folder, resume_config

        checkpoints = checkpoints_folder(Path(args.out))
        if resume:
            if args.config is not None and not family.resumable:
                raise S2AgriInputError(
                    f"--resume continues the epochs of a deep or parcel model; {config.train.model} is fitted in one go: "
                    "drop --resume"
                )
            last = _resumable_checkpoint(Path(args.out), checkpoints)
            config = resume_config(last, config, explicit=args.config is not None)
            if args.model is not None and args.model != config.train.model:
                raise S2AgriInputError(
                    f"--resume continues a {config.train.model} run, not {args.model}: drop --model or --resume"
                )
        elif (checkpoints / "last.pt").exists():
            LOGGER.warning(
                "%s holds an interrupted run: it is replaced (add --resume to continue it)", checkpoints
            )
            shutil.rmtree(checkpoints)
    out = check_out(args.out, args.overwrite or resume, inputs=args.boxes)
    boxes = find_boxes(args.boxes)
    preflight(boxes, required_inputs(config, reference=True))
    family = family_of(config.train.model)  # a resumed run's stored config names the model
    if family.train is None:
        raise S2AgriInputError(f"{config.train.model} needs no training: use it by name with --model")
    with staged_folder(out) as staging, _keep_checkpoints_note(checkpoints):
        card = family.train(boxes, config, staging, checkpoints=checkpoints, resume=resume)
    print(family.summary(card))
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # published with the model (training/)
    if card.get("skipped_boxes"):
        print(f"skipped {len(card['skipped_boxes'])} boxes, see {out / 'model_card.json'}")
    print(f"wrote the model to {out}")
    return 0
